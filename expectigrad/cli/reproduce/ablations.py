"""The paper's ablation grid: (arithmetic vs EMA denominator) x (outer vs inner momentum).

The four chains of the README's ablation table, built from
:mod:`expectigrad.transforms`; each differs from Expectigrad by one piece.
Two corners are Expectigrad itself and ``optax.adam`` (the tests check the
EMA + inner chain equals it), so their grids are the learning-rate
experiment's, trained once per run.
"""

from __future__ import annotations

import pathlib

import jax
import optax

from expectigrad import transforms
from expectigrad.cli.frameworks import EPSILON, MOMENTUM
from expectigrad.cli.reproduce import lr_robustness, mlp_grid
from expectigrad.cli.reproduce.common import Context

TITLE = 'Ablations: arithmetic vs EMA denominator, outer vs inner momentum'
EMA_DECAY = 0.999   # Adam's b2


def _arithmetic_inner(lr: jax.Array) -> optax.GradientTransformation:
  return optax.chain(transforms.inner_momentum(transforms.arithmetic_rms(eps=EPSILON), MOMENTUM),
                     transforms.scale_by_lr(lr))


def _ema_outer(lr: jax.Array) -> optax.GradientTransformation:
  return optax.chain(transforms.scale_by_ema_rms(EMA_DECAY, EPSILON), transforms.outer_momentum(MOMENTUM),
                     transforms.scale_by_lr(lr))


# name -> (denominator, momentum placement, learning rate -> optimizer)
VARIANTS: dict[str, tuple[str, str, mlp_grid.OptimizerFactory]] = {
    'expectigrad': ('arithmetic', 'outer', lr_robustness.OPTIMIZERS['expectigrad']),
    'arithmetic + inner': ('arithmetic', 'inner', _arithmetic_inner),
    'EMA + outer': ('EMA', 'outer', _ema_outer),
    'adam': ('EMA', 'inner', lr_robustness.OPTIMIZERS['adam']),
}


def run(context: Context) -> lr_robustness.Grids:
  """Trains the four variants (reusing grids already trained in this run).

  Returns:
    dataset -> variant -> :class:`~expectigrad.cli.reproduce.mlp_grid.GridResult`.
  """
  return mlp_grid.run_grids(context, {name: v[2] for name, v in VARIANTS.items()}, 'ablation grid')


def section(grids: lr_robustness.Grids) -> str:
  """The Markdown body: the setting, then per dataset a summary and the per-lr accuracies."""
  parts = [mlp_grid.setting(grids) + f' Momentum 0.9 everywhere, EMA decay {EMA_DECAY}, eps {EPSILON:g}.']
  placement = {'denominator': [v[0] for v in VARIANTS.values()], 'momentum': [v[1] for v in VARIANTS.values()]}
  for dataset, results in grids.items():
    parts += [f'**{dataset}**, best learning rate of each variant and the range that works:',
              mlp_grid.summary_table(results, 'variant', placement),
              f'**{dataset}**, mean test accuracy at each learning rate:',
              mlp_grid.per_lr_table(results, 'test_accuracy', 'variant')]
  return '\n\n'.join(parts)


def plot(grids: lr_robustness.Grids, path: pathlib.Path) -> None:
  """Writes loss and accuracy against the learning rate, a row per dataset, to the PNG ``path``."""
  mlp_grid.plot_grids(grids, path, TITLE)
