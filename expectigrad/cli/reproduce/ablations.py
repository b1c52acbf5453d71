"""The paper's ablation grid, (arithmetic vs EMA denominator) x (outer vs inner momentum), on the tasks
where the pieces may matter.

Each variant differs from Expectigrad by one piece (built from
:mod:`expectigrad.transforms`, see :mod:`.optimizers`); two corners are
Expectigrad itself and ``optax.adam`` (the tests check the EMA + inner chain
equals it), so their grids are the tasks' own, trained once per run. The
variants follow the same protocol on the same seeds and data.
"""

from __future__ import annotations

import dataclasses
import pathlib

from expectigrad.cli.reproduce import language, protocol, sparse
from expectigrad.cli.reproduce.common import Context

TITLE = 'Ablations: arithmetic vs EMA denominator, outer vs inner momentum'
# name -> (denominator, momentum placement); names are keys of optimizers.FACTORIES.
VARIANTS: dict[str, tuple[str, str]] = {
    'expectigrad': ('arithmetic', 'outer'), 'arithmetic + inner': ('arithmetic', 'inner'),
    'EMA + outer': ('EMA', 'outer'), 'adam': ('EMA', 'inner'),
}
# task -> the module with its problem(context) and scores(context, names).
TASKS = {'sparse': sparse, 'language': language}


@dataclasses.dataclass(frozen=True)
class AblationResult:
  """task -> the protocol's result for the four variants."""

  tasks: dict[str, protocol.Tuned]


def run(context: Context) -> AblationResult:
  """The four variants on every task of :data:`TASKS` (reusing grids already trained in this run)."""
  results = {}
  for task, module in TASKS.items():
    results[task] = protocol.Tuned(f'{task}: ablations', f'The {task} task ({module.TITLE}).',
                                   module.scores(context, VARIANTS), module.problem(context).metric)
  return AblationResult(results)


def section(result: AblationResult) -> str:
  """Per task, the protocol's table of the variants."""
  parts = ['Each variant: ' + '; '.join(f'{name} = {d} denominator, {m} momentum' for name, (d, m) in VARIANTS.items())
           + '. Momentum 0.9, eps 1e-8, EMA decay 0.999.']
  for tuned in result.tasks.values():
    parts += [f'**{tuned.setting}**', protocol.summary_table(tuned.scores, tuned.metric, protocol.cell)]
  return '\n\n'.join(parts)


def claims(result: AblationResult) -> list[tuple[str, str, protocol.Comparison]]:
  """(task and metric, variant, comparison) for every variant against Expectigrad."""
  return [(f'{task} {metric}', name, c) for task, tuned in result.tasks.items()
          for metric, name, c in protocol.claims(tuned)]


def plot(result: AblationResult, path: pathlib.Path) -> None:
  """Validation metric against the learning rate, a panel per task."""
  protocol.plot_scores({f'{task} {t.metric}': t.scores for task, t in result.tasks.items()}, path, TITLE)
