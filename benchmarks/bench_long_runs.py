"""Long runs: the error of Expectigrad's mean of squares after 1e3..1e8 steps, and compensated_sum's cost.

Run: python -m benchmarks.bench_long_runs [--max-steps 1e8] [--rounds 20]

Part 1 runs the package's own accumulation (``transforms.arithmetic_rms``)
for up to ``--max-steps`` steps under ``lax.fori_loop``, with squared
gradients of equal size per element (g = 10**-3 .. 1, one element each), and
prints the relative error of the mean ``s / n`` against the exact mean, for a
float32 and a bfloat16 sum, with and without ``compensated_sum``.

Part 2 times a jitted, donated Expectigrad step with and without
``compensated_sum`` against ``optax.adam`` on W1 and W2 (interleaved).
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import expectigrad
from benchmarks import common
from benchmarks.bench_jax import make_step
from expectigrad import transforms

GRADIENTS = 10.0 ** np.linspace(-3, 0, 8)
CHECKPOINTS = (1e3, 1e4, 1e5, 1e6, 1e7, 3e7, 1e8)
VARIANTS = {  # label -> (state dtype, compensated_sum)
    'float32 sum': (jnp.float32, False),
    'float32, compensated_sum=True': (jnp.float32, True),
    'bfloat16 sum': (jnp.bfloat16, False),
    'bfloat16, compensated_sum=True': (jnp.bfloat16, True),
}


def mean_errors(state_dtype, compensated_sum: bool, checkpoints) -> list[float]:
  """Max relative error of ``s / n`` over the elements at each checkpoint (steps)."""
  rms = transforms.arithmetic_rms(state_dtype=state_dtype, compensated_sum=compensated_sum)
  g = jnp.asarray(GRADIENTS, jnp.float32)

  @functools.partial(jax.jit, static_argnums=1)
  def advance(state, steps):
    # unroll: the loop body is a few scalar ops, so the loop's own overhead dominates otherwise.
    return jax.lax.fori_loop(0, steps, lambda _, s: rms.accumulate(g, s), state, unroll=64)

  state, done, errors = rms.init(g), 0, []
  for target in checkpoints:
    state = advance(state, int(target) - done)
    done = int(target)
    mean = np.asarray(state.sum_of_squares, np.float64) / np.asarray(state.nonzero_count, np.float64)
    exact = np.asarray(g, np.float64)**2
    errors.append(float(np.max(np.abs(mean - exact) / exact)))
  return errors


def error_table(max_steps: float) -> str:
  checkpoints = [c for c in CHECKPOINTS if c <= max_steps]
  header = '| state | ' + ' | '.join(f'{c:.0e} steps' for c in checkpoints) + ' |'
  lines = [header, '|---|' + '---:|' * len(checkpoints)]
  for label, (dtype, compensated) in VARIANTS.items():
    errors = mean_errors(dtype, compensated, checkpoints)
    lines.append(f'| {label} | ' + ' | '.join(f'{e:.2e}' for e in errors) + ' |')
  return '\n'.join(lines)


def time_table(rounds: int) -> str:
  lines = ['| workload | implementation | median ms | vs plain |', '|---|---|---:|---:|']
  for workload in ('W1', 'W2'):
    shapes = common.WORKLOADS[workload]
    steps = {
        'expectigrad.expectigrad': make_step(expectigrad.expectigrad(1e-3), shapes),
        'expectigrad.expectigrad(compensated_sum=True)': make_step(
            expectigrad.expectigrad(1e-3, compensated_sum=True), shapes),
        'optax.adam': make_step(optax.adam(1e-3), shapes),
    }
    medians = common.interleaved_medians(steps, rounds)
    plain = medians['expectigrad.expectigrad']
    lines += [f'| {workload} | {name} | {ms:.2f} | {ms / plain:.2f}x |' for name, ms in medians.items()]
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--max-steps', type=float, default=1e8)
  parser.add_argument('--rounds', type=int, default=20)
  args = parser.parse_args()
  start = time.perf_counter()
  print('Relative error of the mean of squares s/n (max over g = 1e-3 .. 1):\n')
  print(error_table(args.max_steps))
  print(f'\n({time.perf_counter() - start:.0f} s)\n\nStep time, jitted and donated:\n')
  print(time_table(args.rounds))


if __name__ == '__main__':
  main()
