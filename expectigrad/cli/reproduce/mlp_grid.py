"""The demo's MLP trained over a grid of learning rates and seeds, as a few compiled calls.

Shared by the learning-rate and the ablation experiment. For one dataset and
one optimizer, every (seed, learning rate) pair is a lane of two nested
``vmap`` s and the training steps are a ``lax.scan``, so the whole grid is
one program (called in pieces so the progress bar moves). The model, the
loss, the data and the batches are the demo's (:mod:`expectigrad.cli.task`,
:mod:`expectigrad.cli.frameworks.jax_mlp`); seed ``s`` is
``make_task(dataset, steps, s)``: its weights, batch order and, for digits,
its train/test split.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from expectigrad.cli import tables
from expectigrad.cli.frameworks.jax_mlp import _loss_and_accuracy  # the demo's MLP, not a copy of it
from expectigrad.cli.main import SEED_LIMIT
from expectigrad.cli.reproduce.common import Context, format_loss, format_lr, pieces
from expectigrad.cli.task import BATCH_SIZE, HIDDEN_UNITS, NUM_CLASSES, make_task

# learning rate (traced) -> optimizer. Module-level functions: jit keys its
# compiled programs on them, and the context caches grids by them.
OptimizerFactory = Callable[[jax.Array], optax.GradientTransformation]
# A learning rate "works" if its mean test accuracy is at least this fraction of the best one.
# Relative, not absolute: the best accuracies range from about 0.6 (mnist1d) to 0.97 (digits).
WORKS = 0.9
# The loss plot's range: a loss of exactly 0 (float32 underflow at large learning rates) or a
# diverged one (inf, NaN, 1e9) is drawn at an edge instead of vanishing or squashing the rest.
LOSS_RANGE = (1e-8, 10.0)


@dataclasses.dataclass(frozen=True)
class GridResult:
  """One optimizer on one dataset, over learning rates and seeds.

  Attributes:
    lrs: the learning rates (columns).
    seeds: the seeds (rows).
    train_loss: ``(seeds, lrs)`` final mean cross-entropy over the whole training set.
    test_accuracy: ``(seeds, lrs)`` final test accuracy.
    steps: training steps.
    wall_s: seconds for the grid, compilation included.
  """

  lrs: tuple[float, ...]
  seeds: tuple[int, ...]
  train_loss: np.ndarray
  test_accuracy: np.ndarray
  steps: int
  wall_s: float

  def best(self) -> int:
    """The index of the learning rate with the highest mean test accuracy."""
    return int(np.argmax(self.test_accuracy.mean(axis=0)))

  def working_lrs(self) -> list[float]:
    """The learning rates whose mean test accuracy is at least :data:`WORKS` x the best."""
    accuracy = self.test_accuracy.mean(axis=0)
    return [lr for lr, a in zip(self.lrs, accuracy) if a >= WORKS * accuracy.max()]


def seeds(context: Context) -> tuple[int, ...]:
  """``seed, seed + 1, ...`` for the configured number, kept in numpy's seed range."""
  return tuple((context.seed + i) % SEED_LIMIT for i in range(context.config.seeds))


def _data(context: Context, dataset: str) -> dict[str, jax.Array]:
  """The tasks of every seed stacked on a leading axis (made once per run)."""
  key = ('data', dataset)
  if key not in context.cache:
    tasks = [make_task(dataset, context.config.train_steps, s) for s in seeds(context)]
    stack = lambda get: jnp.asarray(np.stack([get(task) for task in tasks]))
    context.cache[key] = {
        'params': tuple(stack(lambda task, i=i: task.init_params[i]) for i in range(4)),
        'x_train': stack(lambda task: task.x_train), 'y_train': stack(lambda task: task.y_train),
        'x_test': stack(lambda task: task.x_test), 'y_test': stack(lambda task: task.y_test),
        'batches': stack(lambda task: task.batches),
    }
  return context.cache[key]


@functools.partial(jax.jit, static_argnums=0)
def _init(factory: OptimizerFactory, params: tuple, lrs: jax.Array) -> tuple:
  """Every lane's weights (its seed's) and optimizer state."""
  def one(params, lr):
    return params, factory(lr).init(params)
  return jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None))(params, lrs)


@functools.partial(jax.jit, static_argnums=0)
def _train(factory: OptimizerFactory, carry: tuple, x: jax.Array, y: jax.Array, batches: jax.Array,
           lrs: jax.Array) -> tuple:
  """Minibatch steps on ``batches`` (``(seeds, steps, BATCH_SIZE)`` indices) in every lane."""
  def lane(carry, x, y, batches, lr):
    opt = factory(lr)

    def step(carry, batch):
      params, state = carry
      grads, _ = jax.grad(_loss_and_accuracy, has_aux=True)(params, x[batch], y[batch])
      updates, state = opt.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, carry, batches)[0]
  # Inner axis: learning rates, sharing their seed's data; outer axis: seeds, sharing the learning rates.
  per_lr = jax.vmap(lane, in_axes=(0, None, None, None, 0))
  return jax.vmap(per_lr, in_axes=(0, 0, 0, 0, None))(carry, x, y, batches, lrs)


@jax.jit
def _evaluate(params: tuple, data: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """``(seeds, lrs)`` train loss and test accuracy."""
  def lane(params, x_train, y_train, x_test, y_test):
    return _loss_and_accuracy(params, x_train, y_train)[0], _loss_and_accuracy(params, x_test, y_test)[1]
  return jax.vmap(jax.vmap(lane, in_axes=(0, None, None, None, None)))(
      params, data['x_train'], data['y_train'], data['x_test'], data['y_test'])


def train_grid(context: Context, dataset: str, factory: OptimizerFactory, advance: Callable[[int], None]
               ) -> GridResult:
  """Trains every (seed, learning rate) of the configuration with one optimizer.

  Args:
    context: sizes, seed, and the cache of data.
    dataset: one of :data:`expectigrad.cli.task.DATASETS`.
    factory: learning rate -> optimizer.
    advance: called with the number of steps done after each piece.

  Returns:
    The :class:`GridResult`.
  """
  start = time.perf_counter()
  config = context.config
  data = _data(context, dataset)
  lrs = jnp.asarray(config.lrs, jnp.float32)
  carry = _init(factory, data['params'], lrs)
  for first, stop in pieces(config.train_steps):
    carry = _train(factory, carry, data['x_train'], data['y_train'], data['batches'][:, first:stop], lrs)
    advance(stop - first)
  loss, accuracy = (np.asarray(a, np.float64) for a in _evaluate(carry[0], data))
  return GridResult(config.lrs, seeds(context), loss, accuracy, config.train_steps, time.perf_counter() - start)


def run_grids(context: Context, factories: Mapping[str, OptimizerFactory], description: str
              ) -> dict[str, dict[str, GridResult]]:
  """dataset -> optimizer name -> :class:`GridResult`, for every configured dataset.

  A grid another experiment of the run already trained (same dataset, same
  factory) is reused, not trained again.
  """
  config = context.config
  todo = [(d, name, f) for d in config.datasets for name, f in factories.items()
          if ('grid', d, f) not in context.cache]
  with context.bar(len(todo) * config.train_steps, description) as bar:
    for dataset, name, factory in todo:
      bar.set_postfix_str(f'{dataset} {name}')
      context.cache['grid', dataset, factory] = train_grid(context, dataset, factory, bar.update)
  return {d: {name: context.cache['grid', d, f] for name, f in factories.items()} for d in config.datasets}


def setting(grids: Mapping[str, Mapping[str, GridResult]]) -> str:
  """One sentence on what was trained, from the results."""
  some = next(iter(next(iter(grids.values())).values()))
  return (f"The demo's MLP (inputs-{HIDDEN_UNITS}-{NUM_CLASSES}, ReLU), {some.steps} minibatch steps of {BATCH_SIZE} "
          f"from each seed's weights, on {' and '.join(grids)}; {len(some.seeds)} seeds "
          f"({', '.join(map(str, some.seeds))}) x {len(some.lrs)} learning rates from {format_lr(some.lrs[0])} "
          f"to {format_lr(some.lrs[-1])}. Train loss: mean cross-entropy over the whole training set; test "
          f'accuracy on the held-out set; both after the last step. In the figure, lines are means over '
          f'seeds, bands span the lowest to the highest seed, losses are clipped to [{LOSS_RANGE[0]:g}, '
          f'{LOSS_RANGE[1]:g}].')


def summary_table(results: Mapping[str, GridResult], name_header: str = 'optimizer',
                  first_columns: Mapping[str, list[str]] | None = None) -> str:
  """Per optimizer: the best learning rate (by mean test accuracy), its scores, and the range that works.

  Args:
    results: optimizer name -> grid, on one dataset.
    name_header: the first column's header.
    first_columns: header -> one cell per optimizer, put after the name.
  """
  first_columns = first_columns or {}
  rows = []
  for i, (name, r) in enumerate(results.items()):
    b = r.best()
    works = r.working_lrs()
    rows.append([name, *(cells[i] for cells in first_columns.values()), format_lr(r.lrs[b]),
                 format_loss(r.train_loss[:, b].mean()),
                 f'{r.test_accuracy[:, b].mean():.3f} ± {r.test_accuracy[:, b].std():.3f}',
                 f'{len(works)} of {len(r.lrs)}: {format_lr(min(works))} to {format_lr(max(works))}'])
  headers = [name_header, *first_columns, 'best lr', 'train loss', 'test accuracy',
             f'lrs reaching {WORKS:.0%} of its best accuracy']
  return tables.markdown_table(headers, rows, numeric=[False] * (1 + len(first_columns)) + [True] * 4)


def per_lr_table(results: Mapping[str, GridResult], metric: str, name_header: str = 'optimizer') -> str:
  """Per optimizer and learning rate, the mean over seeds of ``metric`` ('train_loss' or 'test_accuracy')."""
  lrs = next(iter(results.values())).lrs
  cell = format_loss if metric == 'train_loss' else (lambda a: f'{a:.3f}')
  rows = [[name, *(cell(v) for v in getattr(r, metric).mean(axis=0))] for name, r in results.items()]
  return tables.markdown_table([name_header, *(format_lr(lr) for lr in lrs)], rows,
                               numeric=[False] + [True] * len(lrs))


def plot_grids(grids: Mapping[str, Mapping[str, GridResult]], path: pathlib.Path, title: str) -> None:
  """Per dataset, final train loss and test accuracy against the learning rate.

  Lines are the means over seeds, bands span the lowest to the highest seed.
  Losses are drawn clipped to :data:`LOSS_RANGE`.
  """
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  figure = Figure(figsize=(11, 3.6 * len(grids)), layout='constrained')
  axes = figure.subplots(len(grids), 2, squeeze=False)
  for (loss_axes, accuracy_axes), (dataset, results) in zip(axes, grids.items()):
    for i, (name, r) in enumerate(results.items()):
      loss = np.clip(np.nan_to_num(r.train_loss, nan=np.inf), *LOSS_RANGE)
      for ax, values in ((loss_axes, loss), (accuracy_axes, r.test_accuracy)):
        ax.plot(r.lrs, values.mean(axis=0), color=f'C{i}', marker='.', label=name)
        ax.fill_between(r.lrs, values.min(axis=0), values.max(axis=0), color=f'C{i}', alpha=0.2, linewidth=0)
    loss_axes.set(xscale='log', yscale='log', xlabel='learning rate', ylabel=f'{dataset}: final train loss')
    accuracy_axes.set(xscale='log', xlabel='learning rate', ylabel=f'{dataset}: test accuracy', ylim=(0, 1))
  axes[0, 1].legend(loc='lower left', fontsize='small')
  figure.suptitle(title)
  figure.savefig(path, dpi=80)
