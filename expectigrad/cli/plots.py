"""PNG plots with matplotlib's object API (no pyplot, so no GUI backend or global state)."""

from __future__ import annotations

import pathlib
from typing import Mapping, Sequence

import numpy as np

_LINESTYLES = ('-', '--', ':', '-.')


def plot_curves(results: Sequence, path: pathlib.Path, title: str) -> None:
  """Train loss and test accuracy over steps: a colour per optimizer, a line style per framework.

  Args:
    results: :class:`expectigrad.cli.demo.RunResult` values.
    path: the PNG to write.
    title: the figure title.
  """
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  optimizers = list(dict.fromkeys(r.optimizer for r in results))
  frameworks = list(dict.fromkeys(r.framework for r in results))
  figure = Figure(figsize=(10, 4), layout='constrained')
  loss_axes, accuracy_axes = figure.subplots(1, 2)
  for r in results:
    style = dict(color=f'C{optimizers.index(r.optimizer)}',
                 linestyle=_LINESTYLES[frameworks.index(r.framework) % len(_LINESTYLES)],
                 label=f'{r.optimizer} ({r.framework})' if len(frameworks) > 1 else r.optimizer)
    loss_axes.plot(r.eval_steps, r.train_loss, **style)
    accuracy_axes.plot(r.eval_steps, r.test_accuracy, **style)
  loss_axes.set(xlabel='step', ylabel='train loss (whole training set)', yscale='log')
  accuracy_axes.set(xlabel='step', ylabel='test accuracy')
  accuracy_axes.legend(loc='lower right', fontsize='small')
  figure.suptitle(title)
  figure.savefig(path, dpi=80)


def plot_trajectories(trajectories: Mapping[str, np.ndarray], path: pathlib.Path, title: str) -> None:
  """x over t for each optimizer, with the optimum (-1) and the worst point (+1) marked.

  Args:
    trajectories: optimizer name -> x_t for t = 0..T (x_0 is not drawn).
    path: the PNG to write.
    title: the figure title.
  """
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  figure = Figure(figsize=(7, 3.5), layout='constrained')
  axes = figure.subplots()
  for name, xs in trajectories.items():
    axes.plot(np.arange(1, len(xs)), xs[1:], label=name)   # t = 1.. on a log axis
  axes.axhline(-1.0, color='grey', linestyle=':', linewidth=1)
  axes.axhline(1.0, color='grey', linestyle=':', linewidth=1)
  axes.set(xlabel='t', ylabel='x', ylim=(-1.1, 1.1), xscale='log')
  axes.legend(loc='center right')
  figure.suptitle(title)
  figure.savefig(path, dpi=80)
