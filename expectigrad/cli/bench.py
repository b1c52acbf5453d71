"""``expectigrad bench``: runs the benchmark scripts of a source checkout and merges their tables.

The scripts live in the repository's top-level ``benchmarks`` package, which
is not part of the wheel: they time competitors (fused torch Adam,
torch.compile, TF1 sessions) and need every framework, which a user of the
optimizer does not. So ``bench`` works from a source checkout (run in it, or
installed from it with ``pip install -e``) and says so otherwise.
"""

from __future__ import annotations

import importlib
import math
import pathlib
import sys
import types
from typing import Sequence

import expectigrad
from expectigrad.cli import tables
from expectigrad.cli.errors import CommandError, UsageError

# --framework value -> the benchmark module that times it.
BENCH_MODULES = {'jax': 'bench_jax', 'torch': 'bench_torch', 'tf': 'bench_tf'}


def checkout_root() -> pathlib.Path:
  """The directory holding the ``expectigrad`` package that is running."""
  return pathlib.Path(expectigrad.__file__).resolve().parents[1]


def import_benchmarks() -> types.ModuleType:
  """``benchmarks.common`` from the checkout this ``expectigrad`` was imported from.

  Raises:
    UsageError: if that directory has no ``benchmarks`` package (an
      installed wheel), with the commands that get one.
  """
  root = checkout_root()
  if not (root / 'benchmarks' / 'common.py').is_file():
    raise UsageError(
        f'bench is a source-checkout tool: it runs the benchmarks/ folder, which the installed '
        f'package in {root} does not have; in a clone of the repository run '
        f'`pip install -e ".[demo]"`, then `expectigrad bench` (or `python -m benchmarks.bench_torch`)')
  if str(root) not in sys.path:
    sys.path.insert(0, str(root))
  return importlib.import_module('benchmarks.common')


def run_benchmarks(frameworks: Sequence[str], workloads: Sequence[str], rounds: int | None) -> list:
  """Runs each framework's ``run(workloads, rounds)``; frameworks that cannot be imported are skipped.

  Args:
    frameworks: keys of :data:`BENCH_MODULES`.
    workloads: names in ``benchmarks.common.WORKLOADS``.
    rounds: interleaved rounds, or None for each script's default.

  Returns:
    All ``benchmarks.common.Row`` values, framework by framework.

  Raises:
    CommandError: outside a source checkout, or if no framework could run.
  """
  import_benchmarks()
  rows = []
  for framework in frameworks:
    module_name = f'benchmarks.{BENCH_MODULES[framework]}'
    try:
      module = importlib.import_module(module_name)
    except ImportError as error:
      print(f'note: skipping {framework}: cannot import {module_name} ({error})', file=sys.stderr)
      continue
    print(f'running {module_name} ...', file=sys.stderr)
    rows += module.run(workloads=tuple(workloads), **({} if rounds is None else {'rounds': rounds}))
  if not rows:
    raise CommandError('no benchmark could run; see the notes above.')
  return rows


def bench_table(rows: Sequence) -> str:
  """The merged table: step times, ratio to each framework's Adam, and share of the roofline.

  The roofline is the time Expectigrad's step would take if it did nothing but
  move its bytes at the bandwidth measured in the same run; "of roofline" is
  that time over the measured one (100% = as fast as memory allows).
  """
  common = import_benchmarks()
  bandwidths = {}   # each script measures its own
  for r in rows:
    bandwidths.setdefault(r.framework, r.bandwidth_gbps)
  header = ('roofline: an Expectigrad step moves '
            f'{common.EXPECTIGRAD_BYTES_PER_ELEMENT} bytes/element; streaming bandwidth measured in '
            'the same run: ' + ', '.join(f'{fw} {gbps:.1f} GB/s' for fw, gbps in bandwidths.items()))
  cells = [[r.framework, r.workload, r.implementation, f'{r.median_ms:.2f}',
            '' if math.isnan(r.baseline_ratio) else f'{r.baseline_ratio:.2f}x {r.baseline}',
            f'{r.lower_bound_ms:.2f}', f'{100 / r.lower_bound_ratio:.0f}%']
           for r in rows]
  table = tables.markdown_table(
      ['framework', 'workload', 'implementation', 'median ms', 'vs baseline', 'roofline ms', 'of roofline'],
      cells, numeric=[False, False, False, True, False, True, True])
  return f'{header}\n\n{table}'
