"""Trains a model over every (seed, learning rate) lane of the protocol in a few compiled calls.

The lanes are two nested ``vmap`` s (seeds outside, sharing the learning
rates; learning rates inside, sharing their seed's data and initial weights)
and the steps a ``lax.scan``, called in equal pieces so the progress bar
moves. A task is a :class:`Problem` (its model) and a :class:`Data` (every
seed's batches and held-out sets); every optimizer sees the same ones, so
the runs are paired.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from expectigrad.cli.experiments import SEED_LIMIT
from expectigrad.cli.reproduce import optimizers, protocol
from expectigrad.cli.reproduce.common import Context, pieces

SPLITS = ('validation', 'test')


@dataclasses.dataclass(frozen=True)
class Problem:
  """A model and how to score it; its functions are traced once per optimizer.

  Attributes:
    init: a PRNG key -> initial parameters.
    loss: (parameters, one batch) -> the training loss.
    evaluate: (parameters, one held-out set) -> metric name -> a scalar.
    metric: the metric of ``evaluate`` that chooses the learning rate (lower is better, > 0).
  """

  init: Callable[[jax.Array], Any]
  loss: Callable[[Any, Any], jax.Array]
  evaluate: Callable[[Any, Any], dict[str, jax.Array]]
  metric: str


@dataclasses.dataclass(frozen=True)
class Data:
  """Every seed's data, stacked on a leading seed axis.

  Attributes:
    keys: ``(seeds,)`` PRNG keys of the initial parameters.
    batches: a pytree of ``(seeds, steps, ...)`` arrays: the training stream, in order.
    held_out: split name (:data:`SPLITS`) -> a pytree of ``(seeds, ...)`` arrays, never trained on.
  """

  keys: jax.Array
  batches: Any
  held_out: Mapping[str, Any]

  @property
  def steps(self) -> int:
    return jax.tree.leaves(self.batches)[0].shape[1]


def seeds(context: Context) -> tuple[int, ...]:
  """``seed, seed + 1, ...`` for the configured number, kept in numpy's seed range."""
  return tuple((context.seed + i) % SEED_LIMIT for i in range(context.config.seeds))


def keys(context: Context) -> jax.Array:
  """``(seeds,)`` PRNG keys of :func:`seeds`: each seed's initial parameters."""
  return jax.vmap(jax.random.key)(jnp.asarray(seeds(context), jnp.uint32))


# Initial parameters compile once per problem, not once per optimizer: drawing them is most of the
# compile time of a small model's start.
@functools.partial(jax.jit, static_argnums=0)
def _params(problem: Problem, keys: jax.Array) -> Any:
  return jax.vmap(problem.init)(keys)


@functools.partial(jax.jit, static_argnums=0)
def _init(factory: optimizers.Factory, params: Any, lrs: jax.Array) -> tuple:
  def one(params, lr):
    return params, factory(lr).init(params)
  return jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None))(params, lrs)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _train(problem: Problem, factory: optimizers.Factory, carry: tuple, batches: Any, lrs: jax.Array) -> tuple:
  def lane(carry, batches, lr):
    opt = factory(lr)

    def step(carry, batch):
      params, state = carry
      grads = jax.grad(problem.loss)(params, batch)
      updates, state = opt.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, carry, batches)[0]
  per_lr = jax.vmap(lane, in_axes=(0, None, 0))
  return jax.vmap(per_lr, in_axes=(0, 0, None))(carry, batches, lrs)


@functools.partial(jax.jit, static_argnums=0)
def _evaluate(problem: Problem, params: Any, held_out: Any) -> dict[str, jax.Array]:
  return jax.vmap(jax.vmap(problem.evaluate, in_axes=(0, None)))(params, held_out)


def train(problem: Problem, factory: optimizers.Factory, data: Data, lrs: Sequence[float],
          advance: Callable[[int], None]) -> dict[str, dict[str, np.ndarray]]:
  """Trains every (seed, learning rate) lane through the whole stream, then scores it.

  Args:
    problem: the model.
    factory: learning rate -> optimizer.
    data: the stacked data of the seeds.
    lrs: the learning-rate grid.
    advance: called with the number of steps done after each piece.

  Returns:
    split -> metric -> ``(seeds, lrs)`` float64 values (non-finite where a lane diverged).
  """
  lr_array = jnp.asarray(lrs, jnp.float32)
  carry = _init(factory, _params(problem, data.keys), lr_array)
  for start, stop in pieces(data.steps):
    part = jax.tree.map(lambda a, start=start, stop=stop: a[:, start:stop], data.batches)
    carry = _train(problem, factory, carry, part, lr_array)
    advance(stop - start)
  return {split: {m: np.asarray(v, np.float64) for m, v in _evaluate(problem, carry[0], data.held_out[split]).items()}
          for split in SPLITS}


def run_optimizers(context: Context, task: str, problem: Problem, data: Callable[[], Data],
                   names: Sequence[str], lrs: Sequence[float] | None = None) -> dict[str, protocol.Scores]:
  """Optimizer name -> :class:`~expectigrad.cli.reproduce.protocol.Scores` on one task.

  A grid another experiment of this run already trained (same task, same
  optimizer) is reused; the data is made once per task and run.

  Args:
    context: sizes, seed, cache and progress.
    task: the task's name, a cache key.
    problem: the model (the same object for every call of a run, so it compiles once).
    data: makes the task's data (called only if some grid is not cached).
    names: keys of :data:`~expectigrad.cli.reproduce.optimizers.FACTORIES`.
    lrs: the task's learning-rate grid (default: the configuration's ``lrs``); the same for every call of a
      task in a run, since its grids are cached by task and optimizer.
  """
  lrs = context.config.lrs if lrs is None else lrs
  todo = [name for name in names if (task, name) not in context.cache]
  if todo:
    if (task, 'data') not in context.cache:
      context.cache[task, 'data'] = data()
    stacked = context.cache[task, 'data']
    with context.bar(len(todo) * stacked.steps, task) as bar:
      for name in todo:
        bar.set_postfix_str(name)
        metrics = train(problem, optimizers.FACTORIES[name], stacked, lrs, bar.update)
        context.cache[task, name] = protocol.Scores(
            tuple(lrs), seeds(context), metrics['validation'][problem.metric], metrics['test'][problem.metric],
            {m: v for m, v in metrics['test'].items() if m != problem.metric}, optimizers.DEFAULT_LRS[name])
  return {name: context.cache[task, name] for name in names}
