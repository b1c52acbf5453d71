"""Step and compile times of Expectigrad's torch executors vs torch.optim.Adam, all variants.

Run ``python -m benchmarks.bench_torch [--workloads W1 W2] [--rounds N] [--device cpu|cuda]``.

Per workload, every implementation steps its own copy of the parameters with
the same fixed gradients:

* ``expectigrad.bridges.torch.Optimizer`` over ``expectigrad.expectigrad``
  with ``executor='torch'`` (the lowered program, eagerly), ``compile=True``
  (the lowered step compiled by Inductor) and ``executor='jax'`` (the JAX
  runtime through dlpack), and ``expectigrad.pytorch.Expectigrad`` with its
  default ``step()`` and under ``torch.compile(opt.step)`` (Dynamo tracing
  the step, as a user's compiled training step does);
* ``torch.optim.Adam`` as a for-loop (``foreach=False``, torch's CPU
  default), ``foreach=True`` (the baseline of the ratio column), ``fused=True``
  and ``torch.compile(opt.step)`` of a ``foreach=True`` Adam;
* a per-parameter Python loop, as the 2020 ``expectigrad`` package did.

First the compiled implementations take their first steps, one after the
other, and the wall time of each (the first step compiles) is printed. Unless
``TORCHINDUCTOR_CACHE_DIR`` is set, Inductor is pointed at a fresh temporary
cache directory before each, so these are cold compiles; a trivial function
is compiled before them, so the one-time cost of loading the compiler
(printed too) is charged to none of them. Then all implementations are
warmed up (2 steps) and timed interleaved, round by round; ratios are taken against
``torch.optim.Adam(foreach=True)`` and against Expectigrad's memory-bandwidth
lower bound measured in this run, and the compiled Expectigrads are also
compared with the compiled Adam. A step that fails is reported with its
traceback and left out of the table.

The environment is used as is. On a machine with few cores, OpenMP threads
that spin while idle (``OMP_WAIT_POLICY`` unset) can slow Inductor's compiled
kernels by an order of magnitude; the OpenMP settings in effect are printed.
"""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Sequence

import torch

import expectigrad
from benchmarks import common
from expectigrad.bridges.torch import Optimizer, jax_runs_on
from expectigrad.pytorch import Expectigrad

LOWERED_EAGER = 'Expectigrad, lowered, eager (executor="torch")'
LOWERED_COMPILED = 'Expectigrad, lowered, compiled (compile=True)'
USER_COMPILED = 'torch.compile(expectigrad.pytorch.Expectigrad.step)'
JAX_EXECUTOR = 'Expectigrad, JAX executor (executor="jax")'
DEFAULT_STEP = 'expectigrad.pytorch.Expectigrad (default step())'
FOR_LOOP_ADAM = 'torch.optim.Adam(foreach=False)'
BASELINE = 'torch.optim.Adam(foreach=True)'
FUSED_ADAM = 'torch.optim.Adam(fused=True)'
COMPILED_ADAM = 'torch.compile(torch.optim.Adam.step)'
LOOP_2020 = 'per-parameter loop Expectigrad (2020 package)'

# Timed on their first steps, which compile.
COMPILED = (LOWERED_COMPILED, USER_COMPILED, COMPILED_ADAM)
WARMUP_STEPS = 2

# Inductor cache directories this module created (a second run() makes another).
_OWN_CACHE_DIRS: list[str] = []


class LoopExpectigrad(torch.optim.Optimizer):
  """Expectigrad written per parameter in torch, as the 2020 ``expectigrad`` package did.

  A competitor for the benchmark only: the library never writes the math in torch by hand.
  """

  def __init__(self, params, lr=1e-3, beta=0.9, eps=1e-8):
    super().__init__(params, dict(lr=lr, beta=beta, eps=eps))

  @torch.no_grad()
  def step(self, closure=None):
    for group in self.param_groups:
      lr, beta, eps = group['lr'], group['beta'], group['eps']
      for p in group['params']:
        if p.grad is None:
          continue
        state = self.state[p]
        if not state:
          state['step'] = 0
          state['s'] = torch.zeros_like(p)
          state['n'] = torch.zeros_like(p, dtype=torch.int32)
          state['m'] = torch.zeros_like(p)
        state['step'] += 1
        g = p.grad
        square = g * g
        state['s'].add_(square)
        state['n'].add_(square != 0)
        rms = (state['s'] / state['n'].clamp(min=1)).sqrt_().add_(eps)
        state['m'].mul_(beta).add_(g / rms, alpha=1 - beta)
        p.add_(state['m'], alpha=-lr / (1 - beta**state['step']))


def _bridge(**options: Any) -> Callable[[list], torch.optim.Optimizer]:
  return lambda params: Optimizer(params, expectigrad.expectigrad, lr=1e-3, beta=0.9, eps=1e-8,
                                  sparse_counter=True, **options)


# name -> (make the optimizer from a parameter list, whether its step is torch.compile'd here).
MAKERS: dict[str, tuple[Callable[[list], torch.optim.Optimizer], bool]] = {
    LOWERED_EAGER: (_bridge(executor='torch'), False),
    LOWERED_COMPILED: (_bridge(compile=True), False),
    JAX_EXECUTOR: (_bridge(executor='jax'), False),
    DEFAULT_STEP: (Expectigrad, False),
    USER_COMPILED: (Expectigrad, True),
    FOR_LOOP_ADAM: (lambda params: torch.optim.Adam(params, lr=1e-3, foreach=False), False),
    BASELINE: (lambda params: torch.optim.Adam(params, lr=1e-3, foreach=True), False),
    FUSED_ADAM: (lambda params: torch.optim.Adam(params, lr=1e-3, fused=True), False),
    COMPILED_ADAM: (lambda params: torch.optim.Adam(params, lr=1e-3, foreach=True), True),
    LOOP_2020: (LoopExpectigrad, False),
}


def _say(text: str = '') -> None:
  print(text, flush=True)


def _fail(name: str, workload: str) -> None:
  print(f'FAILED: {name} on {workload}; left out of the table:', file=sys.stderr)
  traceback.print_exc()
  sys.stderr.flush()


def _use_fresh_inductor_cache() -> str:
  """Points Inductor at a new empty cache directory unless the user chose one; says which."""
  current = os.environ.get('TORCHINDUCTOR_CACHE_DIR')
  if current is not None and current not in _OWN_CACHE_DIRS:
    return f'TORCHINDUCTOR_CACHE_DIR={current} (set before this run: the cache may be warm)'
  directory = tempfile.mkdtemp(prefix='bench_torch_inductor_')
  _OWN_CACHE_DIRS.append(directory)
  atexit.register(shutil.rmtree, directory, ignore_errors=True)
  os.environ['TORCHINDUCTOR_CACHE_DIR'] = directory
  try:   # in-process caches keyed on the old directory, if anything compiled before
    from torch._inductor.utils import clear_caches  # pylint: disable=import-outside-toplevel
    clear_caches()
  except ImportError:
    pass
  return f'cold: a fresh, empty TORCHINDUCTOR_CACHE_DIR={directory}'


def _load_compiler(device: str) -> float:
  """Seconds to compile and run a trivial function: the compiler's one-time cost per process."""
  start = time.perf_counter()
  common.blocking(lambda: torch.compile(lambda x: x * 2 + 1, fullgraph=True)(
      torch.ones(8, device=device)), device)()
  return time.perf_counter() - start


def _openmp_settings() -> str:
  return ', '.join([*(f'{k}={os.environ.get(k, "(unset)")}'
                      for k in ('OMP_WAIT_POLICY', 'OMP_NUM_THREADS')),
                    f'torch.get_num_threads()={torch.get_num_threads()}'])


def _steps(workload: str, device: str
           ) -> tuple[dict[str, Callable[[], Any]], dict[str, torch.optim.Optimizer]]:
  """One blocking ``step`` per implementation, each over its own copy of the parameters."""
  shapes = common.WORKLOADS[workload]
  generator = torch.Generator().manual_seed(0)
  grads = [torch.randn(shape, generator=generator).to(device) for shape in shapes]
  steps, optimizers = {}, {}
  for name, (make, compile_step) in MAKERS.items():
    if name == JAX_EXECUTOR and not jax_runs_on(torch.device(device)):
      _say(f'{name}: skipped, the installed jaxlib has no {device} backend')
      continue
    params = [torch.nn.Parameter(torch.zeros(shape, device=device)) for shape in shapes]
    for p, g in zip(params, grads):
      p.grad = g.clone()
    try:
      optimizers[name] = make(params)
    except Exception:  # pylint: disable=broad-except
      _fail(name, workload)
      continue
    step = torch.compile(optimizers[name].step) if compile_step else optimizers[name].step
    steps[name] = common.blocking(step, device)
  return steps, optimizers


def _memory_table(workload: str, steps: dict[str, Callable[[], Any]], device: str) -> str:
  """Peak bytes a step allocates beyond what exists before it, per implementation (CUDA)."""
  param_bytes = 4 * common.num_elements(workload)
  lines = [f'{workload}: transient memory of one step (torch.cuda.max_memory_allocated)',
           '| implementation | MiB | / parameter bytes |', '|---|---:|---:|']
  for name, step in steps.items():
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    peak = torch.cuda.max_memory_allocated(device) - before
    lines.append(f'| {name} | {peak / 2**20:.1f} | {peak / param_bytes:.2f}x |')
  return '\n'.join(lines)


def _time_first_steps(steps: dict[str, Callable[[], Any]], workload: str
                      ) -> dict[str, tuple[float, float]]:
  """Seconds of the first (compiling) and second step of each compiled implementation."""
  seconds = {}
  for name in COMPILED:
    if name not in steps:
      continue
    _use_fresh_inductor_cache()   # each cold: the compiled Expectigrads build the same graph
    try:
      times = []
      for _ in range(2):
        start = time.perf_counter()
        steps[name]()
        times.append(time.perf_counter() - start)
      seconds[name] = (times[0], times[1])
    except Exception:  # pylint: disable=broad-except
      _fail(name, workload)
      del steps[name]
  return seconds


def _warm_up(steps: dict[str, Callable[[], Any]], workload: str) -> None:
  for name in list(steps):
    try:
      for _ in range(WARMUP_STEPS):
        steps[name]()
    except Exception:  # pylint: disable=broad-except
      _fail(name, workload)
      del steps[name]


def _compile_table(workload: str, seconds: dict[str, tuple[float, float]]) -> str:
  lines = [f'{workload}: first step (compile) seconds',
           '| implementation | first step (compile) s | second step s |', '|---|---:|---:|']
  lines += [f'| {name} | {first:.1f} | {second:.3f} |' for name, (first, second) in seconds.items()]
  return '\n'.join(lines)


def _compiled_vs_compiled(rows: Sequence[common.Row]) -> str:
  medians = {(r.workload, r.implementation): r.median_ms for r in rows}
  lines = [f'compiled vs compiled: each compiled Expectigrad / {COMPILED_ADAM}',
           '| workload | Expectigrad compiled | ms | Adam compiled ms | ratio |',
           '|---|---|---:|---:|---:|']
  for workload in dict.fromkeys(r.workload for r in rows):
    adam = medians.get((workload, COMPILED_ADAM), float('nan'))
    for name in (LOWERED_COMPILED, USER_COMPILED):
      mine = medians.get((workload, name), float('nan'))
      lines.append(f'| {workload} | {name} | {mine:.2f} | {adam:.2f} | {mine / adam:.2f}x |')
  return '\n'.join(lines)


def run(workloads: Sequence[str] = ('W1', 'W2'), rounds: int = 20, device: str = 'cpu'
        ) -> list[common.Row]:
  """Times every implementation on each workload, interleaved; returns the rows.

  Also prints, as it goes, the first-step (compile) times of the compiled
  implementations, on CUDA each step's transient memory, and, at the end,
  the compiled Expectigrad over the compiled Adam.
  """
  _say(f'Inductor cache: {_use_fresh_inductor_cache()}')
  _say(f'OpenMP: {_openmp_settings()}')
  _say(f'machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min) at the start')
  if device != 'cpu':
    _say(f'device: {torch.cuda.get_device_name(device)}')
  _say('compiler loaded (a trivial function compiled; once per process): '
       f'{_load_compiler(device):.1f} s')
  bandwidth = common.streaming_bandwidth_gbps(device=device)
  rows = []
  for workload in workloads:
    torch._dynamo.reset()  # pylint: disable=protected-access
    steps, optimizers = _steps(workload, device)
    resolved = getattr(optimizers.get(DEFAULT_STEP), 'executor', None)
    if resolved is not None:
      _say(f'{workload}: {DEFAULT_STEP} runs executor={resolved!r}')
    seconds = _time_first_steps(steps, workload)
    _say(_compile_table(workload, seconds) + '\n')
    _warm_up(steps, workload)
    medians = common.interleaved_medians(steps, rounds, warmup=0)
    if device != 'cpu':
      _say(_memory_table(workload, steps, device) + '\n')
    rows += common.make_rows('torch', workload, medians,
                             common.lower_bound_ms(workload, bandwidth),
                             BASELINE if BASELINE in medians else '')
    del steps, optimizers
    gc.collect()
  _say(_compiled_vs_compiled(rows) + '\n')
  return rows


if __name__ == '__main__':
  common.main(run, __doc__.splitlines()[0], devices=('cpu', 'cuda'))
