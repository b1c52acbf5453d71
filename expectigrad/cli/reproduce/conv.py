"""A convolutional net on MNIST-1D (Greydanus, 2020), where convolutions beat MLPs.

The data is ``mnist1d``'s own generator with its default arguments (4000
training and 1000 test sequences of 40 points, made from templates with a
fixed seed; nothing is downloaded). The last :data:`VALIDATION` training
sequences are held out for validation; the test set is the generator's.
Each seed draws its own initial weights and its own order of minibatches,
the same for every optimizer. The model is the MNIST-1D paper's: three
convolutions (kernel :data:`KERNEL`, stride 2, ReLU) and a linear layer to
the 10 classes. Scores: cross-entropy on held-out data (it chooses the
learning rate) and the error rate.
"""

from __future__ import annotations

import functools
import importlib.metadata

import jax
import jax.numpy as jnp
import numpy as np

from expectigrad.cli.reproduce import grid, protocol
from expectigrad.cli.reproduce.common import Config, Context

TITLE = 'A convolutional net on MNIST-1D'
OPTIMIZERS = ('expectigrad', 'adam', 'adamw', 'amsgrad', 'adagrad', 'sgd+momentum', 'lion')
LAYERS, KERNEL, STRIDE = 3, 5, 2
LENGTH, CLASSES = 40, 10
VALIDATION = 1000
BATCH = 32
METRIC = 'cross-entropy'


def _he_normal(key: jax.Array, fan_in: int, shape: tuple[int, ...]) -> jax.Array:
  return jax.random.normal(key, shape) * np.sqrt(2.0 / fan_in)


def _init(config: Config, key: jax.Array) -> dict:
  channels = config.conv_channels
  keys = jax.random.split(key, LAYERS + 1)
  widths = [1] + [channels] * LAYERS
  convs = [{'w': _he_normal(keys[i], KERNEL * widths[i], (KERNEL * widths[i], widths[i + 1])),
            'b': jnp.zeros(widths[i + 1])} for i in range(LAYERS)]
  features = channels * LENGTH // STRIDE**LAYERS
  return {'convs': convs, 'head': {'w': _he_normal(keys[-1], features, (features, CLASSES)) / np.sqrt(2),
                                   'b': jnp.zeros(CLASSES)}}


def conv1d(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """A strided 'same' convolution as one matrix product over patches (fast under ``vmap`` on a CPU, where
  a batched convolution becomes a grouped one).

  Args:
    x: ``(examples, length, in_channels)``.
    w: ``(KERNEL * in_channels, out_channels)``, rows ordered (kernel offset, in channel).
    b: ``(out_channels,)``.

  Returns:
    ``(examples, length // STRIDE, out_channels)``: output o sees inputs ``STRIDE * o + k - KERNEL // 2``.
  """
  examples, length, channels = x.shape
  out = length // STRIDE
  padded = jnp.pad(x, ((0, 0), (KERNEL // 2, KERNEL // 2), (0, 0)))
  patches = jnp.stack([padded[:, k:k + STRIDE * out:STRIDE] for k in range(KERNEL)], axis=2)
  return patches.reshape(examples, out, KERNEL * channels) @ w + b


def _logits(params: dict, x: jax.Array) -> jax.Array:
  """``x``: ``(examples, LENGTH)`` -> ``(examples, CLASSES)``."""
  h = x[..., None]
  for layer in params['convs']:
    h = jax.nn.relu(conv1d(h, layer['w'], layer['b']))
  return h.reshape(len(h), -1) @ params['head']['w'] + params['head']['b']


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy in nats."""
  return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]


def _loss(params: dict, batch: dict[str, jax.Array]) -> jax.Array:
  return _cross_entropy(_logits(params, batch['x']), batch['y']).mean()


def _evaluate(params: dict, held_out: dict[str, jax.Array]) -> dict[str, jax.Array]:
  logits = _logits(params, held_out['x'])
  return {METRIC: _cross_entropy(logits, held_out['y']).mean(),
          'error rate': (logits.argmax(axis=-1) != held_out['y']).mean()}


def problem(context: Context) -> grid.Problem:
  """The model for ``context``'s width, one object per run (so each optimizer compiles once)."""
  key = ('conv', 'problem')
  if key not in context.cache:
    context.cache[key] = grid.Problem(functools.partial(_init, context.config), _loss, _evaluate, METRIC)
  return context.cache[key]


@functools.cache   # generating takes seconds, and it is the same every time
def dataset() -> dict[str, dict[str, np.ndarray]]:
  """'train', 'validation', 'test' -> {'x': float32 sequences, 'y': int32 labels}, from mnist1d's generator."""
  from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=import-outside-toplevel
  raw = make_dataset(get_dataset_args())   # generated from templates; get_dataset would download
  x, y = raw['x'].astype(np.float32), raw['y'].astype(np.int32)
  return {'train': {'x': x[:-VALIDATION], 'y': y[:-VALIDATION]},
          'validation': {'x': x[-VALIDATION:], 'y': y[-VALIDATION:]},
          'test': {'x': raw['x_test'].astype(np.float32), 'y': raw['y_test'].astype(np.int32)}}


def data(context: Context) -> grid.Data:
  """Each seed's minibatches (shuffled epochs), and the held-out sets (the same for every seed)."""
  sets, steps, seeds = dataset(), context.config.conv_steps, context.config.seeds
  train = sets['train']
  per_epoch = len(train['y']) // BATCH
  orders = []
  for s in grid.seeds(context):
    rng = np.random.default_rng(s)
    epochs = [rng.permutation(len(train['y']))[:per_epoch * BATCH] for _ in range(-(-steps // per_epoch))]
    orders.append(np.concatenate(epochs)[:steps * BATCH].reshape(steps, BATCH))
  order = np.stack(orders)
  batches = {k: jnp.asarray(v[order]) for k, v in train.items()}
  held_out = {split: {k: jnp.asarray(np.broadcast_to(v, (seeds, *v.shape))) for k, v in sets[split].items()}
              for split in grid.SPLITS}
  return grid.Data(grid.keys(context), batches, held_out)


def run(context: Context) -> protocol.Tuned:
  """Every optimizer of :data:`OPTIMIZERS` over the grid."""
  config = context.config
  scores = grid.run_optimizers(context, 'conv', problem(context), lambda: data(context), OPTIMIZERS)
  sizes = {split: len(part['y']) for split, part in dataset().items()}
  setting = (f"mnist1d {importlib.metadata.version('mnist1d')}'s generator, default arguments: "
             f'{sizes["train"]} sequences of {LENGTH} points train, the next {sizes["validation"]} validate, its '
             f'{sizes["test"]} test sequences test. Model: {LAYERS} convolutions '
             f'of {config.conv_channels} channels (kernel {KERNEL}, stride {STRIDE}, ReLU) and a linear layer; '
             f'{config.conv_steps} steps of {BATCH} at a constant learning rate.')
  return protocol.Tuned(TITLE, setting, scores, METRIC, ('error rate',))


section, plot, claims = protocol.section, protocol.plot, protocol.claims
