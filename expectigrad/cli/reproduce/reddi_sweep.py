"""Reddi et al. (2018), section 3, swept over C and Adam's beta2: where each optimizer ends.

The problem of :mod:`expectigrad.cli.reddi` with a free C: on x in [-1, 1],
``f_t(x) = C x`` when ``t mod 3 == 1`` and ``-x`` otherwise. For C > 2 the
optimum is x = -1 and the worst point x = +1. The optimizers are those of
``expectigrad reddi`` (Adam and AMSGrad with ``b1 = 0``, Expectigrad with its
defaults, step size ``0.5 / sqrt(t)``), with beta2 swept; every (C, beta2)
pair is one lane of a ``vmap`` and all rounds one ``lax.scan``.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import expectigrad
from expectigrad.cli import reddi, tables
from expectigrad.cli.reproduce.common import Context, pieces

TITLE = "Reddi et al. (2018) section 3: where Adam, AMSGrad and Expectigrad end, over C and beta2"
OPTIMIZERS = ('adam', 'amsgrad', 'expectigrad')
PAPER_BETA2 = '1/(1+C^2)'   # the beta2 of the paper's Theorem 1, one per C
# |x - 1| below this counts as "ended at the worst point" (and likewise at -1).
AT_END = 0.05


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """Final points of the sweep.

  Attributes:
    cs: the values of C (columns).
    beta2_labels: one label per row; the first row is the paper's ``1/(1+C^2)``.
    beta2: ``(rows, len(cs))`` the beta2 of each run.
    final_x: optimizer -> ``(rows, len(cs))`` x after ``steps`` rounds.
      Expectigrad has no beta2: its rows are the same run repeated.
    steps: online rounds.
  """

  cs: tuple[float, ...]
  beta2_labels: tuple[str, ...]
  beta2: np.ndarray
  final_x: dict[str, np.ndarray]
  steps: int


def gradient(t: jax.Array, c: jax.Array) -> jax.Array:
  """The gradient of f_t (t counts from 1): C when t mod 3 == 1, else -1."""
  return jnp.where(t % 3 == 1, c, -1.0)


def optimizers(beta2: jax.Array) -> dict[str, optax.GradientTransformation]:
  """The optimizers of ``expectigrad reddi``, with Adam's and AMSGrad's beta2 set to ``beta2``."""
  return {
      'adam': optax.adam(reddi.learning_rate, b1=0.0, b2=beta2),
      'amsgrad': optax.amsgrad(reddi.learning_rate, b1=0.0, b2=beta2),
      'expectigrad': expectigrad.expectigrad(reddi.learning_rate),
  }


@jax.jit
def _init(beta2: jax.Array) -> tuple[dict, dict]:
  """x = 0 and each optimizer's state, for every lane."""
  def one(b2):
    x = jnp.zeros(())
    return ({name: x for name in OPTIMIZERS}, {name: opt.init(x) for name, opt in optimizers(b2).items()})
  return jax.vmap(one)(beta2)


@jax.jit
def _advance(carry: tuple[dict, dict], c: jax.Array, beta2: jax.Array, ts: jax.Array) -> tuple[dict, dict]:
  """Projected online steps at rounds ``ts`` for every lane (C, beta2)."""
  def lane(carry, c, b2):
    opts = optimizers(b2)

    def step(carry, t):
      xs, states = carry
      g = gradient(t, c)
      new_xs, new_states = {}, {}
      for name, opt in opts.items():
        updates, new_states[name] = opt.update(g, states[name], xs[name])
        new_xs[name] = jnp.clip(optax.apply_updates(xs[name], updates), -1.0, 1.0)
      return (new_xs, new_states), None

    return jax.lax.scan(step, carry, ts)[0]
  return jax.vmap(lane)(carry, c, beta2)


def sweep(cs: tuple[float, ...], beta2s: tuple[float, ...], steps: int, context: Context) -> SweepResult:
  """Runs every optimizer on every (C, beta2) for ``steps`` rounds from x = 0.

  Args:
    cs: values of C, each > 2.
    beta2s: beta2 values of Adam and AMSGrad, in [0, 1); a first row with the
      paper's ``1 / (1 + C**2)`` is added.
    steps: online rounds, >= 1.
    context: for the progress bar.

  Returns:
    The :class:`SweepResult`.
  """
  c_grid = np.asarray(cs, np.float32)
  beta2 = np.vstack([1.0 / (1.0 + c_grid**2), np.repeat(np.asarray(beta2s, np.float32)[:, None], len(cs), 1)])
  c_lanes = jnp.asarray(np.broadcast_to(c_grid, beta2.shape).ravel())
  beta2_lanes = jnp.asarray(beta2.ravel())
  carry = _init(beta2_lanes)
  with context.bar(steps, 'reddi section 3 sweep') as bar:
    for start, stop in pieces(steps):
      carry = _advance(carry, c_lanes, beta2_lanes, jnp.arange(start + 1, stop + 1))
      bar.update(stop - start)
  final = {name: np.asarray(x, np.float64).reshape(beta2.shape) for name, x in carry[0].items()}
  return SweepResult(tuple(cs), (PAPER_BETA2, *(f'{b:g}' for b in beta2s)), beta2, final, steps)


def run(context: Context) -> SweepResult:
  """The sweep with ``context``'s sizes (``reddi_cs``, ``reddi_beta2s``, ``reddi_steps``).

  Returns:
    The :class:`SweepResult`.
  """
  config = context.config
  return sweep(config.reddi_cs, config.reddi_beta2s, config.reddi_steps, context)


def ended_at(result: SweepResult, name: str, point: float) -> int:
  """How many (C, beta2) runs of optimizer ``name`` ended within :data:`AT_END` of ``point``.

  Expectigrad's rows are one run repeated, so only its first row counts.
  """
  rows = result.final_x[name][:1] if name == 'expectigrad' else result.final_x[name]
  return int((np.abs(rows - point) < AT_END).sum())


def section(result: SweepResult) -> str:
  """The Markdown body: the setting, a count of who ended where, the table of final x."""
  rows = []
  for name in OPTIMIZERS:
    labels = ('any (has none)',) if name == 'expectigrad' else result.beta2_labels
    for i, label in enumerate(labels):
      rows.append([name, label, *(f'{x:+.2f}' for x in result.final_x[name][i])])
  table = tables.markdown_table(['optimizer', 'beta2', *(f'C={c:g}' for c in result.cs)], rows,
                                numeric=[False, False, *[True] * len(result.cs)])
  runs = {name: (1 if name == 'expectigrad' else len(result.beta2_labels)) * len(result.cs) for name in OPTIMIZERS}
  counts = ', '.join(f'{name} {ended_at(result, name, 1.0)} of {runs[name]} at +1 and '
                     f'{ended_at(result, name, -1.0)} at -1' for name in OPTIMIZERS)
  return (f'f_t(x) = C x when t mod 3 == 1, else -x, on [-1, 1] (optimum -1, worst point +1); '
          f'x after {result.steps} projected steps of size 0.5/sqrt(t) from x = 0. Adam and AMSGrad '
          f'with b1 = 0 and the beta2 of each row; Expectigrad with beta = 0.9 (it has no beta2). '
          f'Within {AT_END} of an end: {counts}.\n\n{table}')


def plot(result: SweepResult, path: pathlib.Path) -> None:
  """Writes one heat map of the final x per optimizer (rows beta2, columns C) to the PNG ``path``."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  figure = Figure(figsize=(13, 4.2), layout='constrained')
  axes = figure.subplots(1, len(OPTIMIZERS), sharey=True)
  for ax, name in zip(axes, OPTIMIZERS):
    values = result.final_x[name]
    image = ax.imshow(values, cmap='coolwarm', vmin=-1.0, vmax=1.0, aspect='auto')
    for (i, j), x in np.ndenumerate(values):
      ax.text(j, i, f'{x:+.1f}', ha='center', va='center', fontsize='x-small')
    ax.set(title=name + (' (no beta2: rows repeat)' if name == 'expectigrad' else ''), xlabel='C',
           xticks=range(len(result.cs)), xticklabels=[f'{c:g}' for c in result.cs])
  axes[0].set(ylabel='beta2', yticks=range(len(result.beta2_labels)), yticklabels=result.beta2_labels)
  figure.colorbar(image, ax=axes, label=f'x after {result.steps} steps (optimum -1)')
  figure.suptitle(TITLE)
  figure.savefig(path, dpi=80)
