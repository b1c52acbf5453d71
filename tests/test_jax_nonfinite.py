"""Non-finite gradients: propagate per element by default; skip whole steps when composed.

Policy (the same in every framework, since they all run the optax chain):
by default a NaN/Inf gradient element poisons only its own parameter element,
as in optax.adam and torch.optim.Adam; wrapping the chain in
``optax.apply_if_finite`` skips the whole step and leaves the state untouched.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import expectigrad
from tests import reference


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_default_propagates_only_into_the_affected_element(bad):
  rng = np.random.default_rng(0)
  grads = rng.normal(size=(10, 4))
  grads[5, 2] = bad
  opt = expectigrad.expectigrad(0.1)
  x = jnp.ones(4)
  state = opt.init(x)
  for g in grads:
    updates, state = opt.update(jnp.asarray(g), state)
    x = optax.apply_updates(x, updates)
  expected = reference.run_reference(lambda x, t: grads[t - 1], np.ones(4), 10, lr=0.1, beta=0.9,
                                     eps=1e-8)[-1]
  assert np.isnan(x[2])
  healthy = [0, 1, 3]
  assert reference.max_relative_error(np.asarray(x)[healthy], expected[healthy]) < 1e-10


def test_apply_if_finite_skips_the_step_and_leaves_state_untouched():
  opt = optax.apply_if_finite(expectigrad.expectigrad(0.1), max_consecutive_errors=1000)
  params = {'w': jnp.ones(3)}
  state = opt.init(params)
  updates, state = opt.update({'w': jnp.array([1.0, -2.0, 0.5])}, state, params)
  params = optax.apply_updates(params, updates)
  before = state.inner_state
  updates, state = jax.jit(opt.update)({'w': jnp.array([1.0, jnp.inf, 0.5])}, state, params)
  np.testing.assert_array_equal(updates['w'], np.zeros(3))
  jax.tree.map(np.testing.assert_array_equal, state.inner_state, before)
  assert int(state.total_notfinite) == 1
