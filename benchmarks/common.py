"""What every benchmark shares: workloads, interleaved timing, the roofline, the table.

Interface every ``benchmarks/bench_<framework>.py`` follows (the CLI's
``expectigrad bench`` relies on it):

* ``run(workloads: Sequence[str] = ('W1', 'W2'), rounds: int = ...) -> list[Row]``
  times all implementations interleaved (one call of each per round, so
  machine noise hits all of them alike) and returns one :class:`Row` each;
* run as a script, it calls :func:`main` with its ``run``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

def resnet18_shapes(width: float = 1.0) -> list[tuple[int, ...]]:
  """ResNet-18's 62 parameter shapes (torchvision's resnet18()), channels scaled by ``width``."""
  c1, c2, c3, c4 = (int(c * width) for c in (64, 128, 256, 512))
  block = lambda c_in, c_out: [(c_out, c_in, 3, 3), (c_out,), (c_out,),  # noqa: E731
                               (c_out, c_out, 3, 3), (c_out,), (c_out,)]
  down = lambda c_in, c_out: [(c_out, c_in, 1, 1), (c_out,), (c_out,)]  # noqa: E731
  return [(c1, 3, 7, 7), (c1,), (c1,), *block(c1, c1), *block(c1, c1),
          *block(c1, c2), *down(c1, c2), *block(c2, c2), *block(c2, c3), *down(c2, c3),
          *block(c3, c3), *block(c3, c4), *down(c3, c4), *block(c4, c4), (1000, c4), (1000,)]


# 62 tensors, 11,689,512 elements.
RESNET18_SHAPES: list[tuple[int, ...]] = resnet18_shapes()

WORKLOADS: dict[str, list[tuple[int, ...]]] = {
    'W1': [(16_777_216,)],   # one large tensor: pure bandwidth
    'W2': RESNET18_SHAPES,   # many tensors of mixed sizes: per-tensor overheads
}

# An Expectigrad step reads p, g, s, n, m and writes p, s, n, m: 9 four-byte words per element.
EXPECTIGRAD_BYTES_PER_ELEMENT = 36


def num_elements(workload: str) -> int:
  """Total parameter count of a workload."""
  return sum(math.prod(shape) for shape in WORKLOADS[workload])


@dataclasses.dataclass
class Row:
  """One implementation on one workload.

  Attributes:
    framework: 'jax', 'torch', 'keras' or 'tf1'.
    workload: 'W1' or 'W2'.
    implementation: what was timed, e.g. 'expectigrad (bridge)' or 'torch.optim.Adam(foreach=True)'.
    median_ms: median step time over the interleaved rounds.
    lower_bound_ms: Expectigrad's memory-bandwidth lower bound on this workload, this run.
    baseline: name of the implementation the ratio is taken against ('' for none).
    baseline_ratio: median_ms / the baseline's median_ms (nan for none).
  """

  framework: str
  workload: str
  implementation: str
  median_ms: float
  lower_bound_ms: float
  baseline: str = ''
  baseline_ratio: float = float('nan')

  @property
  def lower_bound_ratio(self) -> float:
    return self.median_ms / self.lower_bound_ms

  @property
  def bandwidth_gbps(self) -> float:
    """The streaming bandwidth this row's lower bound was computed from."""
    return EXPECTIGRAD_BYTES_PER_ELEMENT * num_elements(self.workload) / (self.lower_bound_ms * 1e6)


def blocking(step: Callable[[], Any], device: str) -> Callable[[], None]:
  """``step`` followed by a wait for the device to finish it (nothing extra on the CPU)."""
  if device == 'cpu':
    return step
  import torch  # pylint: disable=import-outside-toplevel

  def run() -> None:
    step()
    torch.cuda.synchronize()
  return run


def interleaved_medians(
    steps: Mapping[str, Callable[[], None]], rounds: int, warmup: int = 3
) -> dict[str, float]:
  """Times each blocking ``step()`` once per round, in turn; returns medians in ms."""
  for step in steps.values():
    for _ in range(warmup):
      step()
  samples: dict[str, list[float]] = {name: [] for name in steps}
  for _ in range(rounds):
    for name, step in steps.items():
      start = time.perf_counter()
      step()
      samples[name].append((time.perf_counter() - start) * 1e3)
  return {name: statistics.median(times) for name, times in samples.items()}


def streaming_bandwidth_gbps(num_floats: int = 1 << 26, rounds: int = 10,
                             device: str = 'cpu') -> float:
  """Bytes/s of the fastest in-place ``a += b`` on float32 here (torch if installed, else numpy).

  12 bytes move per element (read a and b, write a); the best of the
  measured libraries stands for what the memory system can stream. On a
  torch ``device`` other than the CPU, torch's alone, synchronised.
  """
  candidates = {}
  if device == 'cpu':
    a = np.ones(num_floats, np.float32)
    b = np.ones(num_floats, np.float32)
    candidates['numpy'] = lambda: np.add(a, b, out=a)
  try:
    import torch  # pylint: disable=import-outside-toplevel
    ta, tb = torch.ones(num_floats, device=device), torch.ones(num_floats, device=device)
    candidates['torch'] = blocking(lambda: ta.add_(tb), device)
  except ImportError:
    pass
  medians = interleaved_medians(candidates, rounds)
  return 12 * num_floats / (min(medians.values()) * 1e-3) / 1e9


def lower_bound_ms(workload: str, bandwidth_gbps: float) -> float:
  """Expectigrad's step time if it only moved its 36 bytes/element at ``bandwidth_gbps``."""
  return EXPECTIGRAD_BYTES_PER_ELEMENT * num_elements(workload) / (bandwidth_gbps * 1e9) * 1e3


def make_rows(
    framework: str,
    workload: str,
    medians: Mapping[str, float],
    lower_bound: float,
    baseline: str = '',
) -> list[Row]:
  """Rows for one workload's medians, with ratios against ``medians[baseline]``."""
  return [
      Row(framework, workload, name, ms, lower_bound, baseline,
          ms / medians[baseline] if baseline else float('nan'))
      for name, ms in medians.items()
  ]


def format_table(rows: Sequence[Row], bandwidth_gbps: float | None = None) -> str:
  """A Markdown table of the rows (ratios to the baseline and to the lower bound)."""
  lines = []
  if bandwidth_gbps is not None:
    lines.append(f'streaming bandwidth: {bandwidth_gbps:.1f} GB/s; lower bound = '
                 f'{EXPECTIGRAD_BYTES_PER_ELEMENT} B/element at that bandwidth\n')
  lines += ['| framework | workload | implementation | median ms | vs baseline | vs lower bound |',
            '|---|---|---|---:|---:|---:|']
  for r in rows:
    versus = '' if not r.baseline else f'{r.baseline_ratio:.2f}x {r.baseline}'
    lines.append(f'| {r.framework} | {r.workload} | {r.implementation} | {r.median_ms:.2f} | '
                 f'{versus} | {r.lower_bound_ratio:.2f}x |')
  return '\n'.join(lines)


def main(run: Callable[..., list[Row]], description: str, devices: Sequence[str] = ()) -> None:
  """The command line of every benchmark script: parses it, calls ``run`` and prints the table.

  ``--rounds`` defaults to ``run``'s own default, so each script states it once;
  ``--device`` (one of ``devices``, the first by default) is offered where given.
  """
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--workloads', nargs='+', choices=sorted(WORKLOADS), default=['W1', 'W2'])
  parser.add_argument('--rounds', type=int, default=None)
  if devices:
    parser.add_argument('--device', choices=devices, default=devices[0])
  args = parser.parse_args()
  options = {} if args.rounds is None else {'rounds': args.rounds}
  if devices:
    options['device'] = args.device
  rows = run(args.workloads, **options)
  print(format_table(rows, rows[0].bandwidth_gbps))
