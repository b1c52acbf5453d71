"""Runs the chosen experiments, writes their figures and ``results.md``, prints the summary."""

from __future__ import annotations

import os
import pathlib
import time
import types
from typing import Any, Sequence

import jax

from expectigrad.cli.main import EXPERIMENT_NAMES
from expectigrad.cli.reproduce import ablations, lr_robustness, online, reddi_sweep
from expectigrad.cli.reproduce.common import DEFAULT, FULL, Config, Context

# name -> module with TITLE, run(context), section(result) and plot(result, path). The names are
# the command line's (which parses them without importing JAX). Ablations come after the
# learning-rate grid, whose Expectigrad and Adam grids they reuse.
EXPERIMENTS: dict[str, types.ModuleType] = dict(zip(EXPERIMENT_NAMES, (reddi_sweep, online, lr_robustness,
                                                                       ablations), strict=True))
# What ``--full`` picks; the command line looks sizes up here when it runs.
CONFIGS: dict[str, Config] = {'default': DEFAULT, 'full': FULL}
RESULTS = 'results.md'


def run_reproduce(out: pathlib.Path, config: Config = DEFAULT, seed: int = 0, only: Sequence[str] | None = None,
                  progress: bool = True) -> dict[str, Any]:
  """Runs experiments; writes ``<name>.png`` for each and ``results.md`` into ``out``; prints the summary.

  Args:
    out: an existing directory.
    config: the sizes (:data:`CONFIGS`).
    seed: seeds the stochastic problem and the MLP experiments (``seed, seed + 1, ...``).
    only: names from :data:`EXPERIMENTS` (default: all, in that order).
    progress: show progress bars on stderr.

  Returns:
    Experiment name -> its result (see each module's ``run``), plus
    ``'wall_s'`` -> seconds per experiment and ``'total_s'``.

  Raises:
    ValueError: for a name not in :data:`EXPERIMENTS`.
  """
  unknown = sorted(set(only or ()) - set(EXPERIMENTS))
  if unknown:
    raise ValueError(f'experiments must be among {list(EXPERIMENTS)}, got {unknown}.')
  start = time.perf_counter()
  context = Context(config, seed, progress)
  results: dict[str, Any] = {'wall_s': {}}
  sections = []
  for name in [n for n in EXPERIMENTS if only is None or n in only]:
    module = EXPERIMENTS[name]
    began = time.perf_counter()
    results[name] = module.run(context)
    module.plot(results[name], out / f'{name}.png')
    results['wall_s'][name] = time.perf_counter() - began
    sections.append(f'## {module.TITLE}\n\n{module.section(results[name])}\n\n'
                    f'![{name}]({name}.png)\n\n({name}: {results["wall_s"][name]:.1f} s)')
  results['total_s'] = time.perf_counter() - start
  size = next((n for n, c in CONFIGS.items() if c == config), 'custom')
  header = (f'# Expectigrad (arXiv:2010.01356): the claims, reproduced\n\n'
            f'`expectigrad reproduce`, {size} sizes, seed {seed}: {results["total_s"]:.1f} s in all on '
            f'{os.cpu_count()} CPU cores ({jax.default_backend()} backend). Every number below comes from this run.')
  text = '\n\n'.join([header, *sections]) + '\n'
  (out / RESULTS).write_text(text)
  print(f'{text}\nwrote {RESULTS} and {len(sections)} PNG figures to {out}\n'
        f'total run time: {results["total_s"]:.1f} s')
  return results
