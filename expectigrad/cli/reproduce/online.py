"""Reddi et al. (2018), section 5: the online problem and its stochastic version, 1e6+ rounds.

On x in [-1, 1]: online, ``f_t(x) = 1010 x`` once every 101 rounds
(``t mod 101 == 1``) and ``-10 x`` otherwise; stochastic, ``1010 x`` with
probability 0.01 and ``-10 x`` otherwise. Both have x* = -1 as the minimiser
of the average (expected) loss. The optimizers are the paper's Adam and
AMSGrad (``b1 = 0.9, b2 = 0.99``) and Expectigrad (``beta = 0.9``), all with
the step size ``0.5 / sqrt(t)`` of ``expectigrad reddi``.

All rounds run in ``lax.scan``: an inner scan of ``stride`` rounds inside an
outer one that keeps one point per stride, so memory stays at
``online_records`` points. Both problems are one 2-vector, since the three
optimizers act per element. Everything is float64: the regret sums a million
terms of size 1010 that nearly cancel.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import expectigrad
from expectigrad.cli import reddi, tables
from expectigrad.cli.reproduce.common import Context, pieces

TITLE = 'Reddi et al. (2018) section 5: the online and the stochastic problem'
PROBLEMS = ('online', 'stochastic')
PERIOD = 101
LARGE, SMALL = 1010.0, -10.0
PROBABILITY = 0.01
OPTIMUM = -1.0


@dataclasses.dataclass(frozen=True)
class OnlineResult:
  """Curves of both problems, recorded every ``steps // len(t)`` rounds.

  Attributes:
    t: the rounds at which points were kept (the last is ``steps``).
    x: optimizer -> ``(len(t), 2)`` x_t, columns in :data:`PROBLEMS` order.
    average_regret: optimizer -> ``(len(t), 2)`` ``R_t / t`` with
      ``R_t = sum_{s <= t} f_s(x_s) - f_s(x*)``, x* = -1.
    mean_gradient: ``(2,)`` the mean of g_t over all rounds: 10 / 101 online; the
      draws' own mean for the stochastic problem (expected 0.2), which sets the
      regret of staying at a point x: ``(x + 1)`` times it per round.
    steps: rounds.
    seed: seeds the stochastic problem's draws.
  """

  t: np.ndarray
  x: dict[str, np.ndarray]
  average_regret: dict[str, np.ndarray]
  mean_gradient: np.ndarray
  steps: int
  seed: int


def optimizers() -> dict[str, optax.GradientTransformation]:
  """Reddi et al.'s Adam and AMSGrad of section 5, and Expectigrad."""
  return {
      'adam': optax.adam(reddi.learning_rate, b1=0.9, b2=0.99),
      'amsgrad': optax.amsgrad(reddi.learning_rate, b1=0.9, b2=0.99),
      'expectigrad': expectigrad.expectigrad(reddi.learning_rate, beta=0.9),
  }


def gradients(t: jax.Array, key: jax.Array) -> jax.Array:
  """``(online, stochastic)`` gradients at round t (counting from 1); f_t(x) = g_t x."""
  online = jnp.where(t % PERIOD == 1, LARGE, SMALL)
  # fold_in(key, t): round t's draw depends on t only, however the rounds are split into calls.
  large = jax.random.bernoulli(jax.random.fold_in(key, t), PROBABILITY)
  return jnp.stack([online, jnp.where(large, LARGE, SMALL)])


def _init() -> tuple[dict, dict, dict, jax.Array]:
  """x = 0, the optimizers' states, zero regret and a zero sum of gradients, for both problems at once."""
  x = jnp.zeros(len(PROBLEMS))
  return ({name: x for name in optimizers()}, {name: opt.init(x) for name, opt in optimizers().items()},
          {name: jnp.zeros(len(PROBLEMS)) for name in optimizers()}, jnp.zeros(len(PROBLEMS)))


@functools.partial(jax.jit, static_argnums=3)
def _advance(carry: tuple[dict, dict, dict, jax.Array], starts: jax.Array, key: jax.Array, stride: int):
  """Runs ``stride`` rounds from each round in ``starts``; returns the carry and a point per stride."""
  opts = optimizers()

  def round_(carry, t):
    xs, states, regret, gradient_sum = carry
    g = gradients(t, key)
    new_xs, new_states, new_regret = {}, {}, {}
    for name, opt in opts.items():
      # f_t is charged at x_t, the point played before seeing g_t.
      new_regret[name] = regret[name] + g * (xs[name] - OPTIMUM)
      updates, new_states[name] = opt.update(g, states[name], xs[name])
      new_xs[name] = jnp.clip(optax.apply_updates(xs[name], updates), -1.0, 1.0)
    return (new_xs, new_states, new_regret, gradient_sum + g), None

  def record(carry, start):
    carry, _ = jax.lax.scan(round_, carry, start + jnp.arange(stride))
    xs, _, regret, _ = carry
    t = start + stride - 1
    return carry, (xs, {name: r / t for name, r in regret.items()})

  return jax.lax.scan(record, carry, starts)


def simulate(steps: int, records: int, seed: int, context: Context) -> OnlineResult:
  """Runs both problems for ``steps`` rounds from x = 0, keeping ``records`` points.

  Args:
    steps: rounds, a multiple of ``records``.
    records: points kept per curve.
    seed: seeds the stochastic draws.
    context: for the progress bar.

  Returns:
    The :class:`OnlineResult`.
  """
  stride = steps // records
  starts = 1 + stride * np.arange(records)
  xs, regrets = [], []
  with jax.enable_x64(True), context.bar(steps, 'reddi section 5') as bar:
    carry, key = _init(), jax.random.key(seed)
    for start, stop in pieces(records, 20):
      carry, (x, regret) = _advance(carry, jnp.asarray(starts[start:stop]), key, stride)
      xs.append(x)
      regrets.append(regret)
      bar.update((stop - start) * stride)
  join = lambda parts: {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}
  mean_gradient = np.asarray(carry[3]) / steps
  return OnlineResult(starts + stride - 1, join(xs), join(regrets), mean_gradient, steps, seed)


def run(context: Context) -> OnlineResult:
  """Both problems with ``context``'s sizes (``online_steps``, ``online_records``) and seed.

  Returns:
    The :class:`OnlineResult`.
  """
  config = context.config
  return simulate(config.online_steps, config.online_records, context.seed, context)


def section(result: OnlineResult) -> str:
  """The Markdown body: the setting and the final x and average regret of every run."""
  rows = [[problem, name, f'{result.x[name][-1, p]:+.4f}', f'{result.average_regret[name][-1, p]:.4f}']
          for p, problem in enumerate(PROBLEMS) for name in optimizers()]
  table = tables.markdown_table(['problem', 'optimizer', f'x after {result.steps} rounds', 'R_T / T'], rows,
                                numeric=[False, False, True, True])
  return (f'Online: f_t(x) = {LARGE:g} x when t mod {PERIOD} == 1, else {SMALL:g} x; stochastic: '
          f'{LARGE:g} x with probability {PROBABILITY} (seed {result.seed}), else {SMALL:g} x; x in [-1, 1], '
          f'optimum x* = {OPTIMUM:g}. {result.steps} rounds of projected steps of size 0.5/sqrt(t) from x = 0 in '
          f'one lax.scan; Adam and AMSGrad with b1 = 0.9, b2 = 0.99, Expectigrad with beta = 0.9. '
          f'R_T = sum_t f_t(x_t) - f_t(x*); the figure keeps a point every {result.t[0]} rounds. '
          f'The stochastic draws averaged a gradient of {result.mean_gradient[1]:.4f} (expected '
          f'{PROBABILITY * LARGE + (1 - PROBABILITY) * SMALL:g}), so staying at x costs (x + 1) x '
          f'{result.mean_gradient[1]:.4f} per round.\n\n{table}')


def plot(result: OnlineResult, path: pathlib.Path) -> None:
  """Writes R_t / t and x_t over t, a row per problem, to the PNG ``path``."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  figure = Figure(figsize=(10, 6), layout='constrained')
  axes = figure.subplots(len(PROBLEMS), 2, sharex=True)
  for p, (regret_axes, x_axes) in enumerate(axes):
    for name in optimizers():
      regret_axes.plot(result.t, result.average_regret[name][:, p], label=name)
      x_axes.plot(result.t, result.x[name][:, p], label=name)
    regret_axes.set(ylabel=f'{PROBLEMS[p]}: R_t / t')
    x_axes.set(ylabel=f'{PROBLEMS[p]}: x_t', ylim=(-1.1, 1.1))
    x_axes.axhline(OPTIMUM, color='grey', linestyle=':', linewidth=1)
  for ax in axes[-1]:
    ax.set(xlabel='t')
  axes[0, 1].legend(loc='center right')
  figure.suptitle(TITLE)
  figure.savefig(path, dpi=80)
