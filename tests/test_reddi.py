"""Reddi et al. (2018): the online problem on which Adam converges to the worst point."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import expectigrad


def reddi_gradient(t):
  """f_t(x) = 3x for t mod 3 == 1, else -x: the regret-minimising point is x = -1."""
  return 3.0 if t % 3 == 1 else -1.0


def run_projected(opt, steps=3000):
  """Online gradient steps with lr 0.5/sqrt(t), x projected onto [-1, 1]."""
  x = jnp.zeros(1)
  state = opt.init(x)

  def step(x, state, g):
    updates, state = opt.update(g, state, x)
    return jnp.clip(optax.apply_updates(x, updates), -1.0, 1.0), state

  step = jax.jit(step)
  for t in range(1, steps + 1):
    x, state = step(x, state, jnp.full(1, reddi_gradient(t)))
  return float(x[0])


def lr_schedule(count):
  return 0.5 / jnp.sqrt(count + 1.0)


def test_adam_goes_to_the_worst_point_and_expectigrad_to_the_optimum():
  adam = run_projected(optax.adam(lr_schedule, b1=0.0, b2=0.1))
  ours = run_projected(expectigrad.expectigrad(lr_schedule))
  assert adam > 0.99
  assert ours < -0.99
  np.testing.assert_allclose([adam, ours], [1.0, -1.0], atol=1e-2)
