"""Runs the chosen experiments, writes their figures and ``results.md``, prints the summary."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import time
import types
from typing import Any, Sequence

import jax

from expectigrad.cli import tables
from expectigrad.cli.experiments import EXPERIMENT_NAMES
from expectigrad.cli.reproduce import (ablations, conv, drift, language, online, protocol, quadratic, reddi_sweep,
                                       sparse)
from expectigrad.cli.reproduce.common import DEFAULT, FULL, Config, Context

# name -> module with TITLE, run(context), section(result), plot(result, path) and, where Expectigrad is
# compared under the protocol, claims(result). The names are the command line's (parsed without JAX).
EXPERIMENTS: dict[str, types.ModuleType] = dict(zip(EXPERIMENT_NAMES, (reddi_sweep, online, drift, quadratic, sparse,
                                                                       language, conv, ablations), strict=True))
# What ``--full`` picks; the command line looks sizes up here when it runs.
CONFIGS: dict[str, Config] = {'default': DEFAULT, 'full': FULL}
RESULTS = 'results.md'
CLAIMS_TITLE = 'Every comparison of this run'
_PACKAGES = ('expectigrad', 'jax', 'jaxlib', 'optax', 'numpy', 'matplotlib')


def machine() -> str:
  """The CPU model, its core count, JAX's backend and the versions of Python and the packages used."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as info:
      cpu = next((line.split(':', 1)[1].strip() for line in info if line.startswith('model name')), cpu)
  except OSError:
    pass   # not Linux: platform's name will do
  versions = ', '.join(f'{name} {importlib.metadata.version(name)}' for name in _PACKAGES)
  return (f'{cpu}, {os.cpu_count()} cores; JAX backend {jax.default_backend()} '
          f'({jax.devices()[0].device_kind}); Python {platform.python_version()}, {versions}')


def claims_table(results: dict[str, Any]) -> str:
  """Every comparison with Expectigrad in ``results``, one row each, with its call."""
  rows = []
  for name, module in EXPERIMENTS.items():
    if name in results and hasattr(module, 'claims'):
      rows += [[name, metric, competitor, f'{c.difference:+.3g} ± {2 * c.standard_error:.3g}', c.call]
               for metric, competitor, c in module.claims(results[name])]
  return tables.markdown_table(['experiment', 'test metric (lower is better)', 'competitor',
                                'competitor minus expectigrad ± 2 SE', 'call for expectigrad'], rows,
                               numeric=[False, False, False, True, False])


def run_reproduce(out: pathlib.Path, config: Config = DEFAULT, seed: int = 0, only: Sequence[str] | None = None,
                  progress: bool = True) -> dict[str, Any]:
  """Runs experiments; writes ``<name>.png`` for each and ``results.md`` into ``out``; prints the summary.

  Args:
    out: an existing directory.
    config: the sizes (:data:`CONFIGS`).
    seed: the first seed; every experiment with randomness uses ``seed, seed + 1, ...``.
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
  header = (f'# Expectigrad (arXiv:2010.01356): the evidence\n\n'
            f'`expectigrad reproduce`, {size} sizes, first seed {seed}: {results["total_s"]:.1f} s in all on '
            f'{machine()}. Every number below comes from this run.\n\n'
            f'## {CLAIMS_TITLE}\n\n{protocol.RULE}; each optimizer at its learning '
            f'rate chosen on validation data (the online problems use the paper\'s step size).\n\n'
            f'{claims_table(results)}')
  text = '\n\n'.join([header, *sections]) + '\n'
  (out / RESULTS).write_text(text)
  print(f'{text}\nwrote {RESULTS} and {len(sections)} PNG figures to {out}\n'
        f'total run time: {results["total_s"]:.1f} s')
  return results
