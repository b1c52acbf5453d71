"""Sparse embeddings: a click-through-style model trained in one streaming pass.

Each example has :data:`FIELDS` categorical fields, each a bag of
:data:`BAG` ids drawn Zipf-distributed (exponent :data:`ZIPF`) from a
vocabulary of ``sparse_vocab`` ids. The label is drawn from a planted
logistic model in which every id, rare or frequent, has a weight of the same
size, so rare ids carry signal. The model sums each bag's embeddings
(``EmbeddingBag``), weighs the field sums by a learned head and adds a bias.
A batch touches a few hundred of the embedding rows; every other row gets an
exact zero gradient, which Expectigrad's sparse counter does not count.
Scores: held-out log-loss (it chooses the learning rate), AUC, and log-loss
on the examples with a rare id and on the others.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from expectigrad.cli.reproduce import grid, protocol
from expectigrad.cli.reproduce.common import Context

TITLE = 'Sparse embeddings: a click-through-style model, one streaming pass'
OPTIMIZERS = ('expectigrad', 'expectigrad (dense n)', 'adam', 'adamw', 'amsgrad', 'adagrad', 'sgd+momentum')
FIELDS, BAG, DIMENSION = 4, 2, 4
ZIPF = 1.1
PLANTED_SCALE, PLANTED_BIAS = 0.5, -1.0    # planted weights ~ N(0, 0.5^2); base rate sigmoid(-1) = 0.27
BATCH = 64
HELD_OUT = 8192   # examples in the validation set and in the test set
# An example is "rare" if one of its ids was seen fewer than this many times in its training stream.
RARE_COUNT = 5


def _init(vocab: int, key: jax.Array) -> dict[str, jax.Array]:
  tables, head = jax.random.split(key)
  return {'tables': 0.01 * jax.random.normal(tables, (FIELDS, vocab, DIMENSION)),
          'head': jax.random.normal(head, (FIELDS, DIMENSION)) / np.sqrt(DIMENSION),
          'bias': jnp.zeros(())}


def _logits(params: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
  """``ids``: ``(examples, FIELDS, BAG)`` -> ``(examples,)`` logits."""
  bags = jax.vmap(lambda table, field_ids: table[field_ids].sum(axis=1), in_axes=(0, 1), out_axes=1)(
      params['tables'], ids)                       # (examples, FIELDS, DIMENSION)
  return jnp.einsum('efd,fd->e', bags, params['head']) + params['bias']


def _log_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example binary cross-entropy in nats."""
  return jnp.logaddexp(0.0, logits) - labels * logits


def _loss(params: dict[str, jax.Array], batch: dict[str, jax.Array]) -> jax.Array:
  return _log_loss(_logits(params, batch['ids']), batch['labels']).mean()


def auc(scores: jax.Array, labels: jax.Array) -> jax.Array:
  """The area under the ROC curve: the chance a random positive scores above a random negative (Mann-Whitney)."""
  ranks = jnp.argsort(jnp.argsort(scores)) + 1.0
  positives = labels.sum()
  negatives = labels.size - positives
  return ((ranks * labels).sum() - positives * (positives + 1) / 2) / (positives * negatives)


def _evaluate(params: dict[str, jax.Array], held_out: dict[str, jax.Array]) -> dict[str, jax.Array]:
  logits = _logits(params, held_out['ids'])
  losses = _log_loss(logits, held_out['labels'])
  rare = held_out['rare']
  return {'log-loss': losses.mean(), 'AUC': auc(logits, held_out['labels']),
          'log-loss, rare ids': (losses * rare).sum() / jnp.maximum(rare.sum(), 1),
          'log-loss, frequent ids': (losses * (1 - rare)).sum() / jnp.maximum((1 - rare).sum(), 1)}


def _seed_data(vocab: int, examples: int, seed: int) -> tuple[np.ndarray, dict, dict]:
  """One seed's planted weights, training stream and held-out sets (``rare`` marks examples with a rare id)."""
  rng = np.random.default_rng(seed)
  zipf = 1.0 / np.arange(1, vocab + 1) ** ZIPF
  planted = PLANTED_SCALE * rng.standard_normal((FIELDS, vocab))

  def draw(n: int) -> dict[str, np.ndarray]:
    ids = rng.choice(vocab, size=(n, FIELDS, BAG), p=zipf / zipf.sum()).astype(np.int32)
    logits = PLANTED_BIAS + planted[np.arange(FIELDS)[None, :, None], ids].sum(axis=(1, 2))
    return {'ids': ids, 'labels': (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(np.float32)}

  train, validation, test = draw(examples), draw(HELD_OUT), draw(HELD_OUT)
  counts = np.stack([np.bincount(train['ids'][:, f].ravel(), minlength=vocab) for f in range(FIELDS)])
  for split in (validation, test):
    seen = counts[np.arange(FIELDS)[None, :, None], split['ids']]
    split['rare'] = (seen.reshape(len(seen), -1).min(axis=1) < RARE_COUNT).astype(np.float32)
  steps = examples // BATCH
  train = {k: v[:steps * BATCH].reshape(steps, BATCH, *v.shape[1:]) for k, v in train.items()}
  return train, validation, test


def problem(context: Context) -> grid.Problem:
  """The model for ``context``'s vocabulary size (one object per run, so each optimizer compiles once)."""
  key = ('sparse', 'problem')
  if key not in context.cache:
    context.cache[key] = grid.Problem(functools.partial(_init, context.config.sparse_vocab), _loss, _evaluate,
                                      'log-loss')
  return context.cache[key]


def data(context: Context) -> grid.Data:
  """Every seed's stream and held-out sets, stacked."""
  config = context.config
  parts = [_seed_data(config.sparse_vocab, config.sparse_examples, s) for s in grid.seeds(context)]
  stack = lambda i: jax.tree.map(lambda *a: jnp.asarray(np.stack(a)), *(p[i] for p in parts))
  return grid.Data(grid.keys(context), stack(0), {'validation': stack(1), 'test': stack(2)})


def scores(context: Context, names: Sequence[str]) -> dict[str, protocol.Scores]:
  """Optimizer name -> its scores on this task over ``context``'s learning-rate grid."""
  return grid.run_optimizers(context, 'sparse', problem(context), lambda: data(context), names)


def run(context: Context) -> protocol.Tuned:
  """Every optimizer of :data:`OPTIMIZERS` over the grid.

  Returns:
    The :class:`~expectigrad.cli.reproduce.protocol.Tuned` result.
  """
  config = context.config
  setting = (f'{FIELDS} fields, each a bag of {BAG} ids drawn Zipf({ZIPF:g}) from {config.sparse_vocab} ids; '
             f'labels from a planted logistic model (every id weight ~ N(0, {PLANTED_SCALE:g}^2), bias '
             f'{PLANTED_BIAS:g}). Model: {DIMENSION}-dimensional embedding bags, a linear head and a bias '
             f'({FIELDS * config.sparse_vocab * DIMENSION:,} embedding weights), trained in one pass over '
             f'{config.sparse_examples:,} examples in batches of {BATCH}. Validation and test: {HELD_OUT} fresh '
             f'examples each. "Rare ids": examples with an id seen fewer than {RARE_COUNT} times in the stream.')
  return protocol.Tuned(TITLE, setting, scores(context, OPTIMIZERS), 'log-loss', ('AUC', 'log-loss, rare ids', 'log-loss, frequent ids'))


section, plot, claims = protocol.section, protocol.plot, protocol.claims

