"""Step time of jitted Expectigrad (plain, CPU layout, no sparse counter) vs optax.adam, donated.

Run: python -m benchmarks.bench_jax [--workloads W1 W2] [--rounds N]
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

import expectigrad
from benchmarks import common


def make_step(opt: optax.GradientTransformation, shapes) -> Callable[[], None]:
  """A blocking closure doing one donated, jitted ``update + apply_updates``."""
  params = [jnp.ones(shape, jnp.float32) for shape in shapes]
  grads = [jnp.full(shape, 0.5, jnp.float32) for shape in shapes]

  @jax.jit
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step, donate_argnums=(0, 1))
  carry = [params, opt.init(params)]

  def run_once() -> None:
    carry[0], carry[1] = step(carry[0], carry[1], grads)
    jax.block_until_ready(carry)

  return run_once


def run(workloads: Sequence[str] = ('W1', 'W2'), rounds: int = 30) -> list[common.Row]:
  """Times Expectigrad and optax.adam, interleaved, on each workload."""
  bandwidth = common.streaming_bandwidth_gbps()
  rows = []
  for workload in workloads:
    shapes = common.WORKLOADS[workload]
    steps = {
        'expectigrad.expectigrad': make_step(expectigrad.expectigrad(1e-3), shapes),
        # The CPU layout option: small kernels' state raveled (see expectigrad.layout).
        'layout.ravel_short_minor_dims(expectigrad)': make_step(
            expectigrad.layout.ravel_short_minor_dims(expectigrad.expectigrad(1e-3)), shapes),
        # Without the per-element nonzero counter (n = t): one state array
        # less to read and write, which shows what the counter costs.
        'expectigrad.expectigrad(sparse_counter=False)': make_step(
            expectigrad.expectigrad(1e-3, sparse_counter=False), shapes),
        'optax.adam': make_step(optax.adam(1e-3), shapes),
    }
    medians = common.interleaved_medians(steps, rounds)
    rows += common.make_rows('jax', workload, medians,
                             common.lower_bound_ms(workload, bandwidth), baseline='optax.adam')
  return rows


if __name__ == '__main__':
  common.main(run, __doc__.splitlines()[0])
