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
optimizers act per element, and the seeds are a ``vmap`` over the stochastic
draws (the online problem is the same in every lane). Everything is float64:
the regret sums a million terms of size 1010 that nearly cancel. Single seeds
mislead here (seed 0's draws average a gradient of 0.045 against an expected
0.2), so the stochastic results are means over the seeds, each optimizer on
the same draws, compared by the protocol's rule.
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
from expectigrad.cli.reproduce import grid, protocol
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
    x: optimizer -> ``(seeds, len(t), 2)`` x_t, the last axis in :data:`PROBLEMS` order.
    average_regret: optimizer -> ``(seeds, len(t), 2)`` ``R_t / t`` with
      ``R_t = sum_{s <= t} f_s(x_s) - f_s(x*)``, x* = -1.
    mean_gradient: ``(seeds, 2)`` the mean of g_t over all rounds: 10 / 101 online; the
      draws' own mean for the stochastic problem (expected 0.2), which sets the
      regret of staying at a point x: ``(x + 1)`` times it per round.
    steps: rounds.
    seeds: seed the stochastic problem's draws, one per row.
  """

  t: np.ndarray
  x: dict[str, np.ndarray]
  average_regret: dict[str, np.ndarray]
  mean_gradient: np.ndarray
  steps: int
  seeds: tuple[int, ...]

  def final_regret(self, name: str, problem: str) -> np.ndarray:
    """``(seeds,)`` R_T / T of optimizer ``name`` on ``problem``."""
    return self.average_regret[name][:, -1, PROBLEMS.index(problem)]


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
@functools.partial(jax.vmap, in_axes=(0, None, 0, None))   # over seeds: their carries and keys
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


def simulate(steps: int, records: int, seeds: tuple[int, ...], context: Context) -> OnlineResult:
  """Runs both problems for ``steps`` rounds from x = 0, keeping ``records`` points, for every seed.

  Args:
    steps: rounds, a multiple of ``records``.
    records: points kept per curve.
    seeds: seed the stochastic draws, one lane each.
    context: for the progress bar.

  Returns:
    The :class:`OnlineResult`.
  """
  stride = steps // records
  starts = 1 + stride * np.arange(records)
  xs, regrets = [], []
  with jax.enable_x64(True), context.bar(steps, 'reddi section 5') as bar:
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
    carry = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(seeds), *a.shape)), _init())
    for start, stop in pieces(records, 20):
      carry, (x, regret) = _advance(carry, jnp.asarray(starts[start:stop]), keys, stride)
      xs.append(x)
      regrets.append(regret)
      bar.update((stop - start) * stride)
  join = lambda parts: {name: np.concatenate([np.asarray(p[name]) for p in parts], axis=1) for name in parts[0]}
  mean_gradient = np.asarray(carry[3]) / steps
  return OnlineResult(starts + stride - 1, join(xs), join(regrets), mean_gradient, steps, tuple(seeds))


def run(context: Context) -> OnlineResult:
  """Both problems with ``context``'s sizes (``online_steps``, ``online_records``) and seed.

  Returns:
    The :class:`OnlineResult`.
  """
  config = context.config
  return simulate(config.online_steps, config.online_records, grid.seeds(context), context)


def section(result: OnlineResult) -> str:
  """The Markdown body: the setting, the online problem's run, the stochastic problem over the seeds."""
  n = len(result.seeds)
  online = [[name, f'{result.x[name][0, -1, 0]:+.4f}', f'{result.final_regret(name, "online")[0]:.4f}']
            for name in optimizers()]
  stochastic = [[name, protocol.mean_std(result.x[name][:, -1, 1], lambda v: f'{v:.3f}'),
                 protocol.mean_std(result.final_regret(name, 'stochastic'), protocol.cell)]
                for name in optimizers()]
  comparisons = {name: c for _, name, c in claims(result)}
  for row in stochastic:
    c = comparisons.get(row[0])
    row += ['', ''] if c is None else [f'{c.difference:+.3g} ± {2 * c.standard_error:.3g}', c.call]
  return (f'Online: f_t(x) = {LARGE:g} x when t mod {PERIOD} == 1, else {SMALL:g} x; stochastic: '
          f'{LARGE:g} x with probability {PROBABILITY}, else {SMALL:g} x; x in [-1, 1], optimum x* = {OPTIMUM:g}. '
          f'{result.steps} rounds of projected steps of size 0.5/sqrt(t) from x = 0 (the paper\'s schedule: '
          f'nothing is tuned); Adam and AMSGrad with b1 = 0.9, b2 = 0.99, Expectigrad with beta = 0.9. '
          f'R_T = sum_t f_t(x_t) - f_t(x*); the figure keeps a point every {result.t[0]} rounds. The online '
          'problem has no randomness (one run):\n\n'
          + tables.markdown_table(['optimizer', f'x after {result.steps} rounds', 'R_T / T'], online,
                                  numeric=[False, True, True])
          + f'\n\nThe stochastic problem over n = {n} seeds ({", ".join(map(str, result.seeds))}), every '
          f'optimizer on the same draws; mean ± sample std. The draws averaged gradients of '
          f'{", ".join(f"{g:.3f}" for g in result.mean_gradient[:, 1])} (expected '
          f'{PROBABILITY * LARGE + (1 - PROBABILITY) * SMALL:g}). {protocol.RULE}.\n\n'
          + tables.markdown_table(['optimizer', f'x after {result.steps} rounds, n={n}', f'R_T / T, n={n}',
                                   'minus expectigrad ± 2 SE', 'call'], stochastic,
                                  numeric=[False, True, True, True, False]))


def claims(result: OnlineResult) -> list[tuple[str, str, protocol.Comparison]]:
  """(metric, competitor, comparison) on the stochastic problem's R_T / T, paired by seed."""
  reference = result.final_regret('expectigrad', 'stochastic')
  return [('stochastic R_T / T', name, protocol.compare(reference, result.final_regret(name, 'stochastic')))
          for name in optimizers() if name != 'expectigrad']


def plot(result: OnlineResult, path: pathlib.Path) -> None:
  """Writes R_t / t and x_t over t (log-x), a row per problem, to the PNG ``path``; stochastic: mean of seeds."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  figure = Figure(figsize=(11, 6), layout='constrained')
  axes = figure.subplots(len(PROBLEMS), 2, sharex=True)
  for p, (regret_axes, x_axes) in enumerate(axes):
    for name in optimizers():
      regret_axes.plot(result.t, result.average_regret[name][:, :, p].mean(axis=0), label=name if p == 0 else None)
      x_axes.plot(result.t, result.x[name][:, :, p].mean(axis=0))
    regret_axes.set(ylabel=f'{PROBLEMS[p]}: R_t / t', xscale='log', yscale='log')
    x_axes.set(ylabel=f'{PROBLEMS[p]}: x_t', ylim=(-1.1, 1.1), xscale='log')
    x_axes.axhline(OPTIMUM, color='grey', linestyle=':', linewidth=1)
  for ax in axes[-1]:
    ax.set(xlabel='t')
  figure.legend(loc='outside right upper')
  figure.suptitle(TITLE + f' (stochastic: mean of {len(result.seeds)} seeds)')
  figure.savefig(path, dpi=80)
