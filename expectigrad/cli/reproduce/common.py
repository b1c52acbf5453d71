"""What the experiments of ``expectigrad reproduce`` share: their sizes, the run context, progress."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Config:
  """The sizes of one ``reproduce`` run.

  Attributes:
    reddi_cs: the values of C of Reddi et al.'s section 3 problem. Each is > 2:
      with C = 2 every x in [-1, 1] is optimal.
    reddi_beta2s: Adam's and AMSGrad's beta2 values (the paper's
      ``1 / (1 + C**2)`` is always swept as well).
    reddi_steps: online rounds per (C, beta2).
    online_steps: rounds of the section 5 problems; a multiple of ``online_records``.
    online_records: points kept per curve, one every ``online_steps // online_records``
      rounds, so memory does not grow with the number of rounds.
    lrs: the learning-rate grid of the MLP experiments.
    seeds: seeds per (dataset, optimizer, learning rate).
    train_steps: minibatch steps of each MLP training run.
    datasets: the MLP experiments' datasets (see :data:`expectigrad.cli.task.DATASETS`).
  """

  reddi_cs: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
  reddi_beta2s: tuple[float, ...] = (0.01, 0.1, 0.3, 0.5, 0.9, 0.99, 0.999)
  reddi_steps: int = 100_000
  online_steps: int = 2_000_000
  online_records: int = 1000
  lrs: tuple[float, ...] = tuple(np.logspace(-4, 0, 9).tolist())
  seeds: int = 5
  train_steps: int = 3000
  datasets: tuple[str, ...] = ('digits', 'mnist1d')

  def __post_init__(self):
    if self.online_steps % self.online_records:
      raise ValueError(f'online_steps ({self.online_steps}) must be a multiple of '
                       f'online_records ({self.online_records}).')


DEFAULT = Config()
FULL = Config(reddi_steps=1_000_000, online_steps=10_000_000, lrs=tuple(np.logspace(-4, 0, 17).tolist()),
              seeds=8, train_steps=6000)


@dataclasses.dataclass
class Context:
  """One run: its sizes, its seed, whether to show progress, and what experiments share.

  Attributes:
    config: the sizes.
    seed: the base seed; the MLP experiments use ``seed, seed + 1, ...``.
    progress: show progress bars on stderr.
    cache: results reused across experiments (the MLP grids that both the
      learning-rate and the ablation experiment need are trained once).
  """

  config: Config
  seed: int = 0
  progress: bool = True
  cache: dict[Any, Any] = dataclasses.field(default_factory=dict)

  def bar(self, total: int, description: str, unit: str = 'step') -> Any:
    """A tqdm progress bar on stderr (hidden when ``progress`` is False)."""
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    return tqdm(total=total, desc=description, unit=unit, unit_scale=True, disable=not self.progress,
                file=sys.stderr)


def pieces(total: int, target: int = 10) -> list[tuple[int, int]]:
  """Splits ``range(total)`` into equal ``(start, stop)`` pieces, about ``target`` of them.

  Each piece is one call of a compiled scan, so a progress bar can move
  between calls; equal lengths mean the scan compiles once.

  Args:
    total: the length of the range, >= 1.
    target: the most pieces wanted.

  Returns:
    The pieces in order; their count is the largest divisor of ``total`` not
    above ``target`` (1 for a prime ``total`` above ``target``).
  """
  count = max(d for d in range(1, min(target, total) + 1) if total % d == 0)
  size = total // count
  return [(i * size, (i + 1) * size) for i in range(count)]


def format_loss(value: float) -> str:
  """A loss for a table: 3 significant digits, or 'diverged' for inf/NaN."""
  return f'{value:.3g}' if np.isfinite(value) else 'diverged'


def format_lr(lr: float) -> str:
  """A learning rate for a table or a label: two significant digits, e.g. '3.2e-04'."""
  return f'{lr:.1e}'
