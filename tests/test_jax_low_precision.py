"""bfloat16/float16 parameters: float32 state by default, exact counting past 2**11 steps."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import expectigrad
from tests import reference


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_low_precision_params_get_float32_state_and_keep_their_dtype(dtype):
  opt = expectigrad.expectigrad(1e-2)
  params = {'w': jnp.ones((4,), dtype)}
  state = opt.init(params)
  assert state[0].sum_of_squares['w'].dtype == jnp.float32
  assert state[1].momentum['w'].dtype == jnp.float32
  grads = {'w': jnp.full((4,), 0.5, dtype)}
  updates, new_state = jax.jit(opt.update)(grads, state)
  # As optax.adam: updates in the gradients' dtype, here rounded once from float32.
  assert updates['w'].dtype == dtype
  expected = reference.run_reference(lambda x, t: np.full(4, 0.5), np.ones(4), 1, lr=1e-2)
  np.testing.assert_array_equal(np.asarray(updates['w'], np.float32),
                                np.asarray(jnp.asarray(np.diff(expected, axis=0)[0], dtype),
                                           np.float32))
  assert optax.apply_updates(params, updates)['w'].dtype == dtype
  chex.assert_trees_all_equal_dtypes(state, new_state)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_update_in_lax_cond_keeps_low_precision_parameters_stable(dtype):
  """optax's state-stability check: one branch updates, the other returns the parameters."""
  opt = expectigrad.expectigrad(1e-2)
  loss = lambda p: jnp.sum(jnp.square(p.astype(jnp.float32)))

  @jax.jit
  def step(params, state, take):
    updates, state = jax.lax.cond(
        take, lambda: opt.update(jax.grad(loss)(params), state, params), lambda: (params, state))
    return optax.apply_updates(params, updates), state

  params = jnp.ones(3, dtype)
  state = opt.init(params)
  for take in (True, False):
    params, new_state = step(params, state, take)
    assert params.dtype == dtype
    chex.assert_trees_all_equal_dtypes(state, new_state)
    state = new_state


def test_state_dtype_option_overrides_the_default():
  opt = expectigrad.expectigrad(1e-2, state_dtype=jnp.bfloat16)
  state = opt.init({'w': jnp.ones(3, jnp.float32)})
  assert state[0].sum_of_squares['w'].dtype == jnp.bfloat16
  assert state[0].nonzero_count['w'].dtype == jnp.int32


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_more_than_2048_steps_follow_the_reference(dtype):
  """A float16 counter stops at 2048 (2048 + 1 rounds back); ours keep counting.

  The state is float32, so after 3000 steps of a constant-magnitude gradient
  the mean of squares is still exact and every step moves by exactly lr.
  """
  steps, lr = 3000, 1e-3
  grads = np.where(np.arange(steps) % 3 == 0, 0.0, 0.25)  # zeros on every third step
  opt = expectigrad.expectigrad(lr, beta=0.9, eps=1e-8)
  state = opt.init(jnp.zeros(1, dtype))

  @jax.jit
  def run(state):
    def body(state, g):
      updates, state = opt.update(jnp.full(1, g, dtype), state)
      return state, updates[0]
    return jax.lax.scan(body, state, jnp.asarray(grads, jnp.float32))

  state, updates = run(state)
  assert updates.dtype == dtype
  assert int(state[0].nonzero_count[0]) == 2000
  assert int(state[0].count) == steps and int(state[1].count) == steps
  expected = reference.run_reference(lambda x, t: np.array([grads[t - 1]]), np.zeros(1), steps,
                                     lr=lr, beta=0.9, eps=1e-8)
  expected_updates = np.diff(expected[:, 0])
  # The gradients are exact in 8 bits and everything after them is float32,
  # rounded once to the gradients' dtype: within half an ulp of the reference.
  np.testing.assert_allclose(np.asarray(updates, np.float64), expected_updates,
                             rtol=float(jnp.finfo(dtype).eps) / 2 * 1.001, atol=0)
