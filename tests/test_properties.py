"""Property tests: every framework matches the numpy reference on random cases.

Profiles: ``ci`` (default) runs 30 cases per framework; ``EXPECTIGRAD_PROFILE=full``
runs 400 per framework (1000+ in all once several frameworks are installed).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given

import expectigrad
from tests import properties


def run_jax(case: properties.Case) -> np.ndarray:
  with jax.enable_x64(case.dtype == 'float64'):
    opt = expectigrad.expectigrad(case.lr, case.beta, case.eps, case.sparse_counter)
    x = jnp.asarray(case.initial_params())
    state = opt.init(x)
    for g in case.gradients():
      updates, state = opt.update(jnp.asarray(g), state)
      x = optax.apply_updates(x, updates)
    return np.asarray(x)


@given(properties.cases)
def test_jax_matches_reference(case):
  properties.check_against_reference(case, run_jax(case))
