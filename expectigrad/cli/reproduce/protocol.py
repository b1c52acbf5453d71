"""The protocol every tuned experiment follows, and its tables.

Each optimizer runs every learning rate of one shared grid on the same seeds
(same data, same order: the runs are paired). Its learning rate is the one
with the lowest mean *validation* metric; the *test* metric at that rate is
what is reported (mean ± sample standard deviation over the n seeds) and
compared. A comparison with Expectigrad is a win, tie or loss by
:data:`RULE`. The metric is a loss (lower is better, > 0), so "within 10% of
the best" is a ratio.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Callable, Mapping

import numpy as np

from expectigrad.cli import tables
from expectigrad.cli.reproduce.common import format_lr

REFERENCE = 'expectigrad'
# A learning rate is "near the best" if its mean validation metric is within this ratio of the best.
TOLERANCE = 0.10
RULE = ('Win / tie / loss: the paired per-seed difference of the test metric (competitor minus Expectigrad) '
        'has a mean more than two standard errors above zero (win for Expectigrad), more than two below '
        '(loss), else tie; standard error = sample std / sqrt(n)')


@dataclasses.dataclass(frozen=True)
class Scores:
  """One optimizer on one task, over the grid of (seed, learning rate) lanes.

  Attributes:
    lrs: the learning rates (columns).
    seeds: the seeds (rows).
    validation: ``(seeds, lrs)`` the metric on validation data; it alone chooses the learning rate.
    test: ``(seeds, lrs)`` the same metric on test data.
    extra: name -> ``(seeds, lrs)`` other test metrics, reported at the chosen learning rate.
    default_lr: the optimizer's usual default learning rate, one of ``lrs``.
  """

  lrs: tuple[float, ...]
  seeds: tuple[int, ...]
  validation: np.ndarray
  test: np.ndarray
  extra: Mapping[str, np.ndarray]
  default_lr: float

  def chosen(self) -> int:
    """The index of the learning rate with the lowest mean validation metric (a diverged run counts as inf)."""
    return int(np.argmin(_mean(self.validation)))

  def default(self) -> int:
    """The index of :attr:`default_lr` in :attr:`lrs`."""
    return int(np.argmin(np.abs(np.log(np.asarray(self.lrs) / self.default_lr))))

  def near_best(self) -> tuple[float, float]:
    """The lowest and highest learning rate of the unbroken run of rates around the chosen one whose mean
    validation metric is within :data:`TOLERANCE` of the best."""
    mean = _mean(self.validation)
    best = self.chosen()
    near = mean <= mean[best] * (1 + TOLERANCE)
    low = high = best
    while low > 0 and near[low - 1]:
      low -= 1
    while high < len(mean) - 1 and near[high + 1]:
      high += 1
    return self.lrs[low], self.lrs[high]

  def width_decades(self) -> float:
    """``log10`` of :meth:`near_best`'s ratio: how far the learning rate can move and stay near the best."""
    low, high = self.near_best()
    return math.log10(high / low)

  def at_chosen(self) -> np.ndarray:
    """``(seeds,)`` the test metric at the chosen learning rate."""
    return self.test[:, self.chosen()]


@dataclasses.dataclass(frozen=True)
class Tuned:
  """A task's result under the protocol.

  Attributes:
    title: the experiment's title.
    setting: Markdown sentences saying what was trained.
    scores: optimizer name -> its scores; Expectigrad first.
    metric: the name of the metric that chooses the learning rate.
    extra: the names of the extra test metrics to tabulate.
  """

  title: str
  setting: str
  scores: Mapping[str, Scores]
  metric: str
  extra: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Comparison:
  """A competitor against Expectigrad, seed by seed at each one's chosen learning rate.

  Attributes:
    difference: mean of competitor minus Expectigrad (> 0: Expectigrad is better); inf when only the
      competitor diverged, -inf when only Expectigrad did.
    standard_error: sample std of the differences / sqrt(n).
    call: 'win', 'tie' or 'loss', for Expectigrad, by :data:`RULE`.
  """

  difference: float
  standard_error: float
  call: str


def compare(reference: np.ndarray, other: np.ndarray) -> Comparison:
  """Expectigrad's per-seed test metric ``reference`` against a competitor's ``other`` (same seeds).

  Raises:
    ValueError: for fewer than 2 seeds (no standard error) or arrays of different shapes.
  """
  if reference.shape != other.shape or reference.size < 2:
    raise ValueError(f'need paired results over >= 2 seeds, got shapes {reference.shape} and {other.shape}.')
  finite_reference, finite_other = np.isfinite(reference).all(), np.isfinite(other).all()
  if not (finite_reference and finite_other):
    call = 'win' if finite_reference else 'loss' if finite_other else 'tie'
    return Comparison({'win': math.inf, 'loss': -math.inf, 'tie': math.nan}[call], math.nan, call)
  difference = other - reference
  mean = float(difference.mean())
  error = float(difference.std(ddof=1) / math.sqrt(difference.size))
  call = 'win' if mean > 2 * error else 'loss' if mean < -2 * error else 'tie'
  return Comparison(mean, error, call)


def comparisons(scores: Mapping[str, Scores]) -> dict[str, Comparison]:
  """Every optimizer but Expectigrad -> its :class:`Comparison` at the chosen learning rates."""
  reference = scores[REFERENCE].at_chosen()
  return {name: compare(reference, s.at_chosen()) for name, s in scores.items() if name != REFERENCE}


def mean_std(values: np.ndarray, cell: Callable[[float], str]) -> str:
  """'mean ± sample std' of ``values`` over seeds, each formatted by ``cell``; 'diverged' if any is not finite."""
  if not np.isfinite(values).all():
    return 'diverged'
  return f'{cell(values.mean())} ± {cell(values.std(ddof=1))}'


def cell(value: float) -> str:
  """A metric's value for a table: 3 significant digits."""
  return f'{value:.3g}'


def describe(scores: Mapping[str, Scores]) -> str:
  """One paragraph: the grid, the seeds and the rules, from ``scores``."""
  some = next(iter(scores.values()))
  return (f'{len(some.lrs)} learning rates from {format_lr(some.lrs[0])} to {format_lr(some.lrs[-1])} for every '
          f'optimizer; n = {len(some.seeds)} seeds ({", ".join(map(str, some.seeds))}), the same data and order '
          'for every optimizer. Each learning rate is chosen on validation data; the test metric is reported '
          f'there as mean ± sample std over the n seeds. {RULE}. The last column is the '
          f'span of learning rates around the chosen one whose mean validation metric stays within '
          f'{TOLERANCE:.0%} of the best.')


def section(result: Tuned) -> str:
  """The Markdown body of a tuned task: setting, protocol, the summary table and the extra metrics."""
  parts = [result.setting, describe(result.scores), summary_table(result.scores, result.metric, cell)]
  if result.extra:
    parts += ['At the chosen learning rates:', extra_table(result.scores, {m: cell for m in result.extra})]
  return '\n\n'.join(parts)


def plot(result: Tuned, path: pathlib.Path) -> None:
  """Writes the validation metric against the learning rate to the PNG ``path``."""
  plot_scores({result.metric: result.scores}, path, result.title)


def claims(result: Tuned) -> list[tuple[str, str, Comparison]]:
  """(metric, competitor, comparison) for every competitor of Expectigrad in ``result``."""
  return [(result.metric, name, c) for name, c in comparisons(result.scores).items()]


def _mean(values: np.ndarray) -> np.ndarray:
  """The mean over seeds per learning rate, inf where any seed diverged."""
  return np.where(np.isfinite(values).all(axis=0), values.mean(axis=0), np.inf)


def _signed(comparison: Comparison, cell: Callable[[float], str]) -> str:
  if not math.isfinite(comparison.difference):
    return 'one diverged'
  return f'{"+" if comparison.difference >= 0 else "-"}{cell(abs(comparison.difference))} ± {cell(2 * comparison.standard_error)}'


def summary_table(scores: Mapping[str, Scores], metric: str, cell: Callable[[float], str]) -> str:
  """Per optimizer: the chosen learning rate, the test metric there, the call against Expectigrad,
  the test metric at the default learning rate, and the range near the best.

  Args:
    scores: optimizer name -> its scores on one task; Expectigrad first.
    metric: the metric's name, for the headers.
    cell: formats one value of the metric.

  Returns:
    A Markdown table.
  """
  versus = comparisons(scores)
  n = len(next(iter(scores.values())).seeds)
  rows = []
  for name, s in scores.items():
    c = versus.get(name)
    low, high = s.near_best()
    rows.append([name, format_lr(s.lrs[s.chosen()]), mean_std(s.at_chosen(), cell),
                 '' if c is None else _signed(c, cell), '' if c is None else c.call,
                 f'{mean_std(s.test[:, s.default()], cell)} at {format_lr(s.lrs[s.default()])}',
                 f'{s.width_decades():.1f} ({format_lr(low)} to {format_lr(high)})'])
  headers = ['optimizer', 'lr (chosen on validation)', f'test {metric}, n={n}',
             'minus expectigrad ± 2 SE', 'call', f'test {metric} at default lr',
             f'decades within {TOLERANCE:.0%} of best']
  return tables.markdown_table(headers, rows, numeric=[False, True, True, True, False, True, True])


def extra_table(scores: Mapping[str, Scores], cells: Mapping[str, Callable[[float], str]]) -> str:
  """Per optimizer, the extra test metrics at its chosen learning rate (mean ± sample std).

  Args:
    scores: optimizer name -> scores.
    cells: extra metric name -> its formatter; the columns, in order.
  """
  n = len(next(iter(scores.values())).seeds)
  rows = [[name, *(mean_std(s.extra[m][:, s.chosen()], cell) for m, cell in cells.items())]
          for name, s in scores.items()]
  return tables.markdown_table(['optimizer', *(f'test {m}, n={n}' for m in cells)], rows,
                               numeric=[False] + [True] * len(cells))


def plot_scores(panels: Mapping[str, Mapping[str, Scores]], path: pathlib.Path, title: str) -> None:
  """Mean validation metric against the learning rate, one panel per entry, the legend outside.

  Lines are means over seeds, bands the lowest to the highest seed, a ring marks the chosen rate.

  Args:
    panels: panel title (the metric, with its task) -> optimizer name -> scores.
    path: the PNG to write.
    title: the figure title.
  """
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  figure = Figure(figsize=(4.6 * len(panels) + 2.2, 3.8), layout='constrained')
  axes = figure.subplots(1, len(panels), squeeze=False)[0]
  for ax, (label, scores) in zip(axes, panels.items()):
    finite = np.concatenate([s.validation[np.isfinite(s.validation)] for s in scores.values()])
    top = np.quantile(finite, 0.9) if finite.size else 1.0   # keeps diverged rates from squashing the rest
    for i, (name, s) in enumerate(scores.items()):
      values = np.clip(np.nan_to_num(s.validation, nan=np.inf, posinf=np.inf), None, top * 1.5)
      ax.plot(s.lrs, values.mean(axis=0), color=f'C{i}', marker='.', label=name if ax is axes[0] else None)
      ax.fill_between(s.lrs, values.min(axis=0), values.max(axis=0), color=f'C{i}', alpha=0.15, linewidth=0)
      ax.plot(s.lrs[s.chosen()], values.mean(axis=0)[s.chosen()], 'o', color=f'C{i}', fillstyle='none')
    ax.set(xscale='log', xlabel='learning rate', ylabel=f'validation {label}')
  figure.legend(loc='outside right center', fontsize='small')   # centred: clear of the data and the title
  figure.suptitle(title)
  figure.savefig(path, dpi=80)
