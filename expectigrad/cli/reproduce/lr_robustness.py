"""Robustness to the learning rate: five optimizers over a log grid of learning rates.

Expectigrad, Adam and AMSGrad (beta/b1 = 0.9, eps = 1e-8, as in the demo),
Adagrad (optax's defaults) and SGD with momentum 0.9, each trained over the
whole grid of learning rates and seeds of :mod:`mlp_grid` on every dataset.
"""

from __future__ import annotations

import pathlib

import jax
import optax

import expectigrad
from expectigrad.cli.frameworks import EPSILON, MOMENTUM
from expectigrad.cli.reproduce import mlp_grid
from expectigrad.cli.reproduce.common import Context

TITLE = 'Robustness to the learning rate: final loss and test accuracy over a log grid'
Grids = dict[str, dict[str, mlp_grid.GridResult]]


def _expectigrad(lr: jax.Array) -> optax.GradientTransformation:
  return expectigrad.expectigrad(lr, beta=MOMENTUM, eps=EPSILON)


def _adam(lr: jax.Array) -> optax.GradientTransformation:
  return optax.adam(lr, b1=MOMENTUM, eps=EPSILON)


def _amsgrad(lr: jax.Array) -> optax.GradientTransformation:
  return optax.amsgrad(lr, b1=MOMENTUM, eps=EPSILON)


def _sgd_momentum(lr: jax.Array) -> optax.GradientTransformation:
  return optax.sgd(lr, momentum=MOMENTUM)


OPTIMIZERS: dict[str, mlp_grid.OptimizerFactory] = {
    'expectigrad': _expectigrad, 'adam': _adam, 'amsgrad': _amsgrad, 'adagrad': optax.adagrad,
    'sgd+momentum': _sgd_momentum,
}


def run(context: Context) -> Grids:
  """Trains every optimizer over ``context``'s learning rates, seeds and datasets.

  Returns:
    dataset -> optimizer -> :class:`~expectigrad.cli.reproduce.mlp_grid.GridResult`.
  """
  return mlp_grid.run_grids(context, OPTIMIZERS, 'learning-rate grid')


def section(grids: Grids) -> str:
  """The Markdown body: the setting, then per dataset a summary and the per-lr means."""
  parts = [mlp_grid.setting(grids) + ' Adagrad with optax\'s defaults; SGD with momentum 0.9.']
  for dataset, results in grids.items():
    parts += [f'**{dataset}**, best learning rate of each optimizer and the range that works:',
              mlp_grid.summary_table(results),
              f'**{dataset}**, mean test accuracy at each learning rate:',
              mlp_grid.per_lr_table(results, 'test_accuracy'),
              f'**{dataset}**, mean final train loss at each learning rate:',
              mlp_grid.per_lr_table(results, 'train_loss')]
  return '\n\n'.join(parts)


def plot(grids: Grids, path: pathlib.Path) -> None:
  """Writes loss and accuracy against the learning rate, a row per dataset, to the PNG ``path``."""
  mlp_grid.plot_grids(grids, path, TITLE)
