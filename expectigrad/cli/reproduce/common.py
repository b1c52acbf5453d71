"""What the experiments of ``expectigrad reproduce`` share: their sizes, the run context, progress."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from expectigrad.cli.experiments import DEFAULT_SEEDS, FULL_SEEDS


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
    seeds: seeds of every experiment with randomness (>= 2: the protocol needs a standard error).
    lrs: the learning-rate grid every tuned optimizer runs; it holds each one's default rate.
    drift_steps: rounds of the drifting problem; a multiple of ``online_records``.
    quadratic_steps: minibatch steps on the noisy quadratic.
    sparse_vocab: ids per field of the sparse task.
    sparse_examples: examples in its one streaming pass.
    lm_lrs: the language model's learning-rate grid (coarser than ``lrs``: each lane costs far more);
      it holds each optimizer's default rate.
    lm_layers, lm_width, lm_context: the transformer's depth, width and context in bytes.
    lm_batch, lm_steps: windows per step and training steps.
    lm_held_out: bytes of text in the validation split and in the test split.
    conv_channels, conv_steps: the MNIST-1D convolutional net's channels per layer and training steps.
  """

  reddi_cs: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
  reddi_beta2s: tuple[float, ...] = (0.01, 0.1, 0.3, 0.5, 0.9, 0.99, 0.999)
  reddi_steps: int = 100_000
  online_steps: int = 1_000_000
  online_records: int = 1000
  seeds: int = DEFAULT_SEEDS
  lrs: tuple[float, ...] = tuple(np.logspace(-4, 0, 9).tolist())
  drift_steps: int = 10_000
  quadratic_steps: int = 1000
  sparse_vocab: int = 10_000
  sparse_examples: int = 16_384
  lm_lrs: tuple[float, ...] = tuple(np.logspace(-4, 0, 5).tolist())
  lm_layers: int = 2
  lm_width: int = 32
  lm_context: int = 32
  lm_batch: int = 8
  lm_steps: int = 300
  lm_held_out: int = 4096
  conv_channels: int = 16
  conv_steps: int = 600

  def __post_init__(self):
    for name in ('online_steps', 'drift_steps'):
      if getattr(self, name) % self.online_records:
        raise ValueError(f'{name} ({getattr(self, name)}) must be a multiple of '
                         f'online_records ({self.online_records}).')
    if self.seeds < 2:
      raise ValueError(f'seeds must be >= 2 (a standard error needs two), got {self.seeds}.')


DEFAULT = Config()
# Sized for a GPU (it runs there when JAX has one); hours on a CPU.
FULL = Config(reddi_steps=1_000_000, online_steps=10_000_000, seeds=FULL_SEEDS,
              lrs=tuple(np.logspace(-5, 1, 25).tolist()), drift_steps=200_000, quadratic_steps=5000,
              sparse_vocab=100_000, sparse_examples=262_144, lm_lrs=tuple(np.logspace(-5, 0, 11).tolist()),
              lm_layers=4, lm_width=128, lm_context=128, lm_batch=32, lm_steps=5000, lm_held_out=16_384,
              conv_channels=32, conv_steps=6000)


@dataclasses.dataclass
class Context:
  """One run: its sizes, its seed, whether to show progress, and what experiments share.

  Attributes:
    config: the sizes.
    seed: the base seed; the experiments use ``seed, seed + 1, ...``.
    progress: show progress bars on stderr.
    cache: what experiments share: each task's data and model, and its grids (the ablations reuse the
      sparse and language-model grids of Expectigrad and Adam).
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


def format_lr(lr: float) -> str:
  """A learning rate for a table or a label: two significant digits, e.g. '3.2e-04'."""
  return f'{lr:.1e}'
