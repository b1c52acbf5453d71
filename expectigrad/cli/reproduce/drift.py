"""A drifting problem: track a moving optimum through rare large gradients.

In :data:`DIMENSION` dimensions the optimum ``theta_t`` takes a random walk
(steps ``N(0, DRIFT^2 I)`` from ``theta_0 ~ N(0, I)``, where x starts). Round t's gradient at
the played point x_t is ``h_t * (x_t - theta_t) + NOISE * xi_t``, where each
coordinate's curvature ``h_t`` is :data:`BURST` with probability
:data:`BURST_PROBABILITY` and 1 otherwise: rare large gradients. Regret is
tracking regret against the moving optimum, ``R_T / T`` with
``R_T = sum_t 0.5 |x_t - theta_t|^2``. An arithmetic mean of squared gradients
never forgets the bursts; an EMA does: this problem measures which helps.

The protocol runs on held-out streams: every seed draws a validation stream,
which chooses each optimizer's learning rate, and a test stream, which is
reported. Every (stream, learning rate) lane is one ``vmap`` lane, all rounds
one ``lax.scan``, a point kept every ``drift_steps // online_records`` rounds.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from expectigrad.cli.reproduce import grid, optimizers, protocol
from expectigrad.cli.reproduce.common import Context, pieces

TITLE = 'A drifting problem: tracking a moving optimum through rare large gradients'
OPTIMIZERS = ('expectigrad', 'adam', 'amsgrad', 'adagrad', 'sgd+momentum', 'lion')
DIMENSION = 10
DRIFT = 0.01
NOISE = 0.1
BURST, BURST_PROBABILITY = 100.0, 0.01


@dataclasses.dataclass(frozen=True)
class DriftResult:
  """The protocol's result, and the test streams' regret curves.

  Attributes:
    tuned: the :class:`~expectigrad.cli.reproduce.protocol.Tuned` result (metric ``R_T / T``).
    t: the rounds at which curve points were kept.
    curves: optimizer -> ``(seeds, len(t))`` ``R_t / t`` on the test streams at its chosen learning rate.
  """

  tuned: protocol.Tuned
  t: np.ndarray
  curves: dict[str, np.ndarray]


def _round(key: jax.Array, t: jax.Array, theta: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Round t's optimum (after its drift step), curvature and noise, from the stream's key."""
  drift, burst, noise = jax.random.split(jax.random.fold_in(key, t), 3)
  theta = theta + DRIFT * jax.random.normal(drift, (DIMENSION,))
  h = jnp.where(jax.random.bernoulli(burst, BURST_PROBABILITY, (DIMENSION,)), BURST, 1.0)
  return theta, h, NOISE * jax.random.normal(noise, (DIMENSION,))


@functools.partial(jax.jit, static_argnums=0)
def _init(factory: optimizers.Factory, keys: jax.Array, lrs: jax.Array) -> tuple:
  def one(key, lr):
    theta = jax.random.normal(key, (DIMENSION,))   # x starts at the optimum: the regret is all tracking
    return theta, factory(lr).init(theta), theta, jnp.zeros(())
  return jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None))(keys, lrs)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _advance(factory: optimizers.Factory, carry: tuple, keys: jax.Array, starts: jax.Array, stride: int,
             lrs: jax.Array) -> tuple:
  """``stride`` rounds from each round in ``starts`` in every lane; returns the carry and R_t / t per stride."""
  def lane(carry, key, lr):
    opt = factory(lr)

    def round_(carry, t):
      x, state, theta, regret = carry
      theta, h, noise = _round(key, t, theta)
      regret = regret + 0.5 * jnp.sum((x - theta) ** 2)   # charged at x_t, played before g_t is seen
      updates, state = opt.update(h * (x - theta) + noise, state, x)
      return (optax.apply_updates(x, updates), state, theta, regret), None

    def record(carry, start):
      carry, _ = jax.lax.scan(round_, carry, start + jnp.arange(stride))
      return carry, carry[3] / (start + stride - 1)

    return jax.lax.scan(record, carry, starts)
  return jax.vmap(jax.vmap(lane, in_axes=(0, None, 0)), in_axes=(0, 0, None))(carry, keys, lrs)


def _stream_keys(context: Context) -> jax.Array:
  """``(2 * seeds,)`` keys: every seed's validation stream, then every seed's test stream."""
  keys = grid.keys(context)
  return jnp.concatenate([jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, split) for split in (0, 1)])


def simulate(context: Context, factory: optimizers.Factory, advance) -> np.ndarray:
  """``(2 * seeds, lrs, records)`` R_t / t of every stream and learning rate (validation streams first)."""
  config = context.config
  stride = config.drift_steps // config.online_records
  starts = 1 + stride * np.arange(config.online_records)
  keys, lrs = _stream_keys(context), jnp.asarray(config.lrs, jnp.float32)
  carry, curves = _init(factory, keys, lrs), []
  for start, stop in pieces(config.online_records, 20):
    carry, curve = _advance(factory, carry, keys, jnp.asarray(starts[start:stop]), stride, lrs)
    curves.append(np.asarray(curve, np.float64))
    advance((stop - start) * stride)
  return np.concatenate(curves, axis=-1)


def run(context: Context) -> DriftResult:
  """Every optimizer of :data:`OPTIMIZERS` over the grid, on validation and test streams."""
  config = context.config
  n = config.seeds
  scores, curves = {}, {}
  with context.bar(len(OPTIMIZERS) * config.drift_steps, 'drift') as bar:
    for name in OPTIMIZERS:
      bar.set_postfix_str(name)
      regret = simulate(context, optimizers.FACTORIES[name], bar.update)
      final = regret[..., -1]
      scores[name] = protocol.Scores(tuple(config.lrs), grid.seeds(context), final[:n], final[n:], {},
                                     optimizers.DEFAULT_LRS[name])
      curves[name] = regret[n:, scores[name].chosen()]
  stride = config.drift_steps // config.online_records
  setting = (f'{DIMENSION} dimensions; the optimum takes a random walk with steps N(0, {DRIFT:g}^2 I); each '
             f"coordinate's curvature is {BURST:g} with probability {BURST_PROBABILITY:g} (a rare large gradient), "
             f'else 1; gradient noise N(0, {NOISE:g}^2 I). {config.drift_steps} rounds from x = theta_0 at a constant '
             f'learning rate; metric: tracking regret R_T / T, R_T = sum_t 0.5 |x_t - theta_t|^2. Each seed has '
             'a validation stream (chooses the learning rate) and a test stream (reported).')
  tuned = protocol.Tuned(TITLE, setting, scores, 'R_T / T')
  return DriftResult(tuned, stride * (1 + np.arange(config.online_records)), curves)


def section(result: DriftResult) -> str:
  """The protocol's Markdown body."""
  return protocol.section(result.tuned)


def claims(result: DriftResult) -> list[tuple[str, str, protocol.Comparison]]:
  """(metric, competitor, comparison) for every competitor."""
  return protocol.claims(result.tuned)


def plot(result: DriftResult, path: pathlib.Path) -> None:
  """Validation regret against the learning rate, and test R_t / t over t (log-x) at the chosen rates."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  figure = Figure(figsize=(12, 3.8), layout='constrained')
  lr_axes, t_axes = figure.subplots(1, 2)
  for i, (name, s) in enumerate(result.tuned.scores.items()):
    lr_axes.plot(s.lrs, s.validation.mean(axis=0), color=f'C{i}', marker='.', label=name)
    t_axes.plot(result.t, result.curves[name].mean(axis=0), color=f'C{i}')
  lr_axes.set(xscale='log', yscale='log', xlabel='learning rate', ylabel='validation R_T / T')
  t_axes.set(xscale='log', yscale='log', xlabel='t', ylabel='test R_t / t at the chosen lr (mean of seeds)')
  figure.legend(loc='outside right upper', fontsize='small')
  figure.suptitle(TITLE)
  figure.savefig(path, dpi=80)
