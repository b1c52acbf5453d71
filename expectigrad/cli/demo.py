"""``expectigrad demo``: the same MLP trained by Expectigrad and baselines, per framework."""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
import types
from typing import Callable, Sequence

from expectigrad.cli import frameworks as frameworks_lib
from expectigrad.cli import plots, tables
from expectigrad.cli.task import BATCH_SIZE, HIDDEN_UNITS, NUM_CLASSES, Task, make_task

DEFAULT_STEPS = 1500


@dataclasses.dataclass(frozen=True)
class RunResult:
  """One optimizer in one framework.

  Attributes:
    framework, optimizer: what ran.
    eval_steps: steps at which the curves were evaluated (0 = initial weights).
    train_loss: mean cross-entropy over the whole training set at those steps.
    test_accuracy: accuracy on the test set at those steps.
    wall_s: seconds from building the model to the last evaluation, JIT
      compilation and evaluations included.
  """

  framework: str
  optimizer: str
  eval_steps: tuple[int, ...]
  train_loss: tuple[float, ...]
  test_accuracy: tuple[float, ...]
  wall_s: float


def train(module: types.ModuleType, framework: str, optimizer: str, task: Task,
          advance: Callable[[], None]) -> RunResult:
  """Trains ``task``'s MLP with one optimizer, evaluating at ``task.eval_steps``.

  Args:
    module: a framework module (see :mod:`expectigrad.cli.frameworks`).
    framework: its name, for the result.
    optimizer: one of :data:`expectigrad.cli.frameworks.OPTIMIZERS`.
    task: data, initial weights and batches.
    advance: called after every step (drives the progress bar).

  Returns:
    The :class:`RunResult`.
  """
  start = time.perf_counter()
  trainer = module.make_trainer(task.init_params, optimizer)
  eval_steps = set(task.eval_steps)
  train_loss, test_accuracy = [], []
  for t in range(task.steps + 1):
    if t in eval_steps:
      train_loss.append(trainer.evaluate(task.x_train, task.y_train)[0])
      test_accuracy.append(trainer.evaluate(task.x_test, task.y_test)[1])
    if t < task.steps:
      batch = task.batches[t]
      trainer.step(task.x_train[batch], task.y_train[batch])
      advance()
  return RunResult(framework, optimizer, task.eval_steps, tuple(train_loss), tuple(test_accuracy),
                   time.perf_counter() - start)


def warm_up(module: types.ModuleType, task: Task) -> None:
  """Pays a framework's one-time costs outside the timed runs.

  The first model built in a process starts the runtime (XLA, TensorFlow)
  and compiles the evaluation code that later trainers reuse; without this,
  whichever optimizer ran first would be charged a second or more for it.
  """
  trainer = module.make_trainer(task.init_params, frameworks_lib.OPTIMIZERS[0])
  batch = task.batches[0]
  trainer.step(task.x_train[batch], task.y_train[batch])
  trainer.evaluate(task.x_train, task.y_train)
  trainer.evaluate(task.x_test, task.y_test)


def load_frameworks(framework: str) -> dict[str, types.ModuleType]:
  """The trainer modules to run: one, or with 'all' every one that imports.

  Raises:
    FrameworkUnavailable: if a single requested framework cannot be imported.
  """
  if framework != 'all':
    return {framework: frameworks_lib.load(framework)}
  modules = {}
  for name in frameworks_lib.FRAMEWORKS:
    try:
      modules[name] = frameworks_lib.load(name)
    except frameworks_lib.FrameworkUnavailable as error:
      print(f'note: skipping {name}: {error}', file=sys.stderr)
  return modules


def results_table(results: Sequence[RunResult]) -> str:
  """The final table: last train loss, last test accuracy, wall time."""
  rows = [[r.framework, r.optimizer, f'{r.train_loss[-1]:.4f}', f'{r.test_accuracy[-1]:.3f}', f'{r.wall_s:.1f}']
          for r in results]
  return tables.markdown_table(['framework', 'optimizer', 'train loss', 'test accuracy', 'wall s'], rows,
                               numeric=[False, False, True, True, True])


def run_demo(framework: str, dataset: str, steps: int, out: pathlib.Path, seed: int = 0,
             progress: bool = True) -> list[RunResult]:
  """Trains every optimizer in the chosen frameworks; prints the table, writes it and the plot.

  Args:
    framework: one of :data:`expectigrad.cli.frameworks.FRAMEWORKS`, or 'all'
      (every installed one).
    dataset: one of :data:`expectigrad.cli.task.DATASETS`.
    steps: training steps per optimizer, >= 1.
    out: an existing directory; gets ``demo-<dataset>.png`` and ``demo-<dataset>.md``.
    seed: seeds data split, weights and batches.
    progress: show a progress bar on stderr.

  Returns:
    One :class:`RunResult` per framework and optimizer.

  Raises:
    FrameworkUnavailable: if ``framework`` (not 'all') cannot be imported.
  """
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  modules = load_frameworks(framework)
  task = make_task(dataset, steps, seed)
  runs = [(name, module, optimizer) for name, module in modules.items() for optimizer in frameworks_lib.OPTIMIZERS]
  results = []
  with tqdm(total=len(runs) * steps, unit='step', disable=not progress, file=sys.stderr) as bar:
    for name, module, optimizer in runs:
      if optimizer == frameworks_lib.OPTIMIZERS[0]:
        bar.set_description(f'{name} warm-up')
        warm_up(module, task)
      bar.set_description(f'{name} {optimizer}')
      results.append(train(module, name, optimizer, task, lambda: bar.update(1)))
  table = results_table(results)
  title = (f'{dataset}: MLP {task.x_train.shape[1]}-{HIDDEN_UNITS}-{NUM_CLASSES}, '
           f'batch {BATCH_SIZE}, {steps} steps')
  (out / f'demo-{dataset}.md').write_text(f'{title}\n\n{table}\n')
  plots.plot_curves(results, out / f'demo-{dataset}.png', title)
  print(f'{title}\n\n{table}\n\nwrote {out / f"demo-{dataset}.png"} and {out / f"demo-{dataset}.md"}')
  return results
