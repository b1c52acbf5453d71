"""A byte-level transformer language model on the Python standard library's own source.

The text is :data:`MODULES`, read in that order from this interpreter's
standard library (every Python installation ships it; the version and a
sha256 of the text go into the results, since another version reads other
text). Its last ``2 * lm_held_out`` bytes (the end of ``queue.py`` in the default
run) are held out, the first half for validation and the second for test; the rest
is for training. Each seed draws its own initial weights and its own
random windows of the training text, the same for every optimizer. The
model is a pre-norm decoder (RMS norm, causal multi-head attention, a GELU
MLP of four times the width, learned positions, the byte embedding tied to
the output). Score: bits per byte on every non-overlapping window of the
held-out text, all bytes but each window's first predicted.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
import platform
import sysconfig
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from expectigrad.cli.reproduce import grid, protocol
from expectigrad.cli.reproduce.common import Config, Context

TITLE = 'A byte-level transformer language model on the Python standard library'
OPTIMIZERS = ('expectigrad', 'adam', 'adamw', 'amsgrad', 'adagrad', 'sgd+momentum', 'lion')
# Files of the standard library (relative to its folder) present in every CPython 3.10 to 3.13.
MODULES = ('argparse.py', 'functools.py', 'dataclasses.py', 'contextlib.py', 'heapq.py', 'textwrap.py',
           'shlex.py', 'string.py', 'glob.py', 'fnmatch.py', 'bisect.py', 'queue.py')
VOCAB = 256
HEAD_WIDTH = 16
INIT_SCALE = 0.02
METRIC = 'bits/byte'


def text() -> bytes:
  """The concatenated source of :data:`MODULES` from this interpreter's standard library.

  Raises:
    FileNotFoundError: if a module file is missing (a stripped installation), naming it.
  """
  stdlib = pathlib.Path(sysconfig.get_paths()['stdlib'])
  return b''.join((stdlib / name).read_bytes() for name in MODULES)


def splits(corpus: bytes, held_out: int) -> dict[str, np.ndarray]:
  """'train', 'validation', 'test' -> consecutive parts of ``corpus`` as uint8 arrays, the last two
  ``held_out`` bytes long.

  Raises:
    ValueError: if fewer than ``held_out`` bytes would be left to train on.
  """
  data = np.frombuffer(corpus, np.uint8)
  if len(data) < 3 * held_out:
    raise ValueError(f'the text has {len(data)} bytes: too few to hold out 2 x {held_out}.')
  return {'train': data[:-2 * held_out], 'validation': data[-2 * held_out:-held_out], 'test': data[-held_out:]}


def _init(config: Config, key: jax.Array) -> dict:
  width, layers = config.lm_width, config.lm_layers
  keys = iter(jax.random.split(key, 2 + 4 * layers))
  normal = lambda shape, scale=INIT_SCALE: scale * jax.random.normal(next(keys), shape)
  # Residual outputs are scaled down by depth (GPT-2) so the stream's size does not grow with the layers.
  out_scale = INIT_SCALE / np.sqrt(2 * layers)
  blocks = [{'norm1': jnp.ones(width), 'qkv': normal((width, 3 * width)), 'proj': normal((width, width), out_scale),
             'norm2': jnp.ones(width), 'up': normal((width, 4 * width)), 'down': normal((4 * width, width), out_scale)}
            for _ in range(layers)]
  return {'embed': normal((VOCAB, width)), 'position': normal((config.lm_context, width)), 'blocks': blocks,
          'norm': jnp.ones(width)}


def _rms_norm(x: jax.Array, scale: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def _attention(x: jax.Array, qkv: jax.Array, proj: jax.Array) -> jax.Array:
  """Causal multi-head self-attention of ``x``: ``(windows, positions, width)``."""
  windows, positions, width = x.shape
  heads = width // HEAD_WIDTH
  q, k, v = jnp.split((x @ qkv).reshape(windows, positions, 3 * heads, HEAD_WIDTH), 3, axis=2)
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(HEAD_WIDTH)
  causal = jnp.tril(jnp.ones((positions, positions), bool))
  weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(windows, positions, width) @ proj


def _logits(params: dict, inputs: jax.Array) -> jax.Array:
  """``inputs``: ``(windows, positions)`` bytes -> ``(windows, positions, VOCAB)`` next-byte logits."""
  x = params['embed'][inputs] + params['position'][:inputs.shape[1]]
  for block in params['blocks']:
    x = x + _attention(_rms_norm(x, block['norm1']), block['qkv'], block['proj'])
    x = x + jax.nn.gelu(_rms_norm(x, block['norm2']) @ block['up']) @ block['down']
  return _rms_norm(x, params['norm']) @ params['embed'].T


def _bits_per_byte(params: dict, windows: jax.Array) -> jax.Array:
  """Mean next-byte cross-entropy in bits over ``windows``: ``(windows, context + 1)`` bytes."""
  windows = windows.astype(jnp.int32)
  logits = _logits(params, windows[:, :-1])
  targets = jnp.take_along_axis(logits, windows[:, 1:, None], axis=-1)[..., 0]
  return (jax.nn.logsumexp(logits, axis=-1) - targets).mean() / np.log(2)


def _evaluate(params: dict, windows: jax.Array) -> dict[str, jax.Array]:
  return {METRIC: _bits_per_byte(params, windows)}


def problem(context: Context) -> grid.Problem:
  """The model for ``context``'s sizes, one object per run (so each optimizer compiles once)."""
  key = ('language', 'problem')
  if key not in context.cache:
    context.cache[key] = grid.Problem(functools.partial(_init, context.config), _bits_per_byte, _evaluate, METRIC)
  return context.cache[key]


def held_out_windows(part: np.ndarray, context_length: int) -> np.ndarray:
  """Every non-overlapping window of ``context_length + 1`` bytes of ``part`` (consecutive windows share
  one byte, so every byte but the first is predicted once)."""
  count = (len(part) - 1) // context_length
  return np.stack([part[i * context_length:(i + 1) * context_length + 1] for i in range(count)])


def data(context: Context) -> grid.Data:
  """Each seed's random training windows, in order, and the held-out windows (the same for every seed)."""
  config = context.config
  parts = splits(text(), config.lm_held_out)
  train, length = parts['train'], config.lm_context + 1
  batches = []
  for s in grid.seeds(context):
    starts = np.random.default_rng(s).integers(0, len(train) - length, (config.lm_steps, config.lm_batch))
    batches.append(train[starts[..., None] + np.arange(length)])
  windows = {split: held_out_windows(parts[split], config.lm_context) for split in grid.SPLITS}
  held_out = {split: jnp.asarray(np.broadcast_to(w, (len(batches), *w.shape))) for split, w in windows.items()}
  return grid.Data(grid.keys(context), jnp.asarray(np.stack(batches)), held_out)


def scores(context: Context, names: Sequence[str]) -> dict[str, protocol.Scores]:
  """Optimizer name -> its scores on this task over ``context``'s language-model grid."""
  return grid.run_optimizers(context, 'language', problem(context), lambda: data(context), names,
                             context.config.lm_lrs)


def run(context: Context) -> protocol.Tuned:
  """Every optimizer of :data:`OPTIMIZERS` over the grid."""
  config = context.config
  corpus = text()
  parts = splits(corpus, config.lm_held_out)
  parameters = sum(p.size for p in jax.tree.leaves(jax.eval_shape(problem(context).init, jax.random.key(0))))
  setting = (f'Text: {", ".join(MODULES)} from the standard library of Python {platform.python_version()} '
             f'({len(corpus):,} bytes, sha256 {hashlib.sha256(corpus).hexdigest()}); the first '
             f'{len(parts["train"]):,} bytes train, the next {len(parts["validation"]):,} validate, the last '
             f'{len(parts["test"]):,} test. Model: {config.lm_layers} pre-norm transformer layers of width '
             f'{config.lm_width} ({config.lm_width // HEAD_WIDTH} heads), a {config.lm_context}-byte context, '
             f'{parameters:,} parameters; {config.lm_steps} steps of {config.lm_batch} random windows at a '
             f'constant learning rate. Metric: {METRIC} on every {config.lm_context}-byte window of the held-out '
             'text.')
  return protocol.Tuned(TITLE, setting, scores(context, OPTIMIZERS), METRIC)


section, plot, claims = protocol.section, protocol.plot, protocol.claims
