"""Complex parameters in JAX, as optax.adam treats them: squares are |g|**2.

As in optax, the updates are computed from the gradient the caller passes;
for a real loss of a complex parameter that is the conjugate of
``jax.grad``'s result (JAX returns d/dx - i d/dy), which is the direction
of steepest ascent.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import expectigrad
from expectigrad import transforms
from tests import reference

_TARGET = np.array([1.0 - 2.0j, -0.5 + 0.25j, 3.0j, 0.0])


def _loss(z):
  return jnp.sum(jnp.abs(z - _TARGET)**2 * jnp.array([1.0, 4.0, 0.5, 2.0]))


def _descent_gradient(z, t):
  """conj(jax.grad): the steepest-ascent direction; zero on even steps for the last element."""
  g = np.conj(np.asarray(jax.grad(_loss)(jnp.asarray(z))))
  g[-1] = g[-1] if t % 2 else 0.0
  return g


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('beta,sparse_counter', reference.CONFIGS)
def test_complex128_matches_the_reference(beta, sparse_counter):
  x0 = np.array([0.3 + 0.1j, -1.0 + 1.0j, 2.0 - 0.5j, 0.5 + 0.5j])
  expected = reference.run_reference(_descent_gradient, x0, 200, lr=0.05, beta=beta,
                                     sparse_counter=sparse_counter)
  opt = expectigrad.expectigrad(0.05, beta=beta, sparse_counter=sparse_counter)
  z = jnp.asarray(x0)
  state, trajectory = opt.init(z), [x0]
  update = jax.jit(opt.update)
  for t in range(1, 201):
    updates, state = update(jnp.asarray(_descent_gradient(trajectory[-1], t)), state, z)
    z = optax.apply_updates(z, updates)
    trajectory.append(np.asarray(z))
  assert z.dtype == jnp.complex128
  assert reference.max_relative_error(np.stack(trajectory), expected) < 1e-10
  assert state[0].sum_of_squares.dtype == jnp.float64  # |g|**2 is real
  assert beta == 0 or state[1].momentum.dtype == jnp.complex128


def test_an_imaginary_gradient_moves_only_the_imaginary_part():
  z = jnp.array([1.0 + 1.0j, -2.0 + 0.5j], jnp.complex64)
  for opt in (expectigrad.expectigrad(0.1), optax.adam(0.1)):
    state = opt.init(z)
    for _ in range(3):
      updates, state = opt.update(jnp.array([0.5j, -2.0j], jnp.complex64), state, z)
      assert np.all(np.isfinite(np.asarray(updates)))
      np.testing.assert_array_equal(np.asarray(updates).real, 0.0)
      assert np.all(np.asarray(updates).imag * np.array([0.5, -2.0]) < 0)  # against the gradient


@pytest.mark.parametrize('make', [
    lambda: expectigrad.expectigrad(0.05),
    lambda: expectigrad.expectigrad(0.05, sparse_counter=False, compensated_sum=True),
    lambda: optax.chain(transforms.inner_momentum(transforms.ema_rms(), beta=0.9),
                        expectigrad.scale_by_lr(0.05)),
    lambda: optax.chain(transforms.scale_by_ema_rms(), transforms.outer_momentum(0.9),
                        expectigrad.scale_by_lr(0.05)),
], ids=['expectigrad', 'dense-compensated', 'adam-like ablation', 'ema-outer ablation'])
def test_complex_descent_converges_like_optax_adam(make):
  """Every piece minimises a real loss of complex parameters from conj(grad), as optax.adam does."""
  for opt in (make(), optax.adam(0.05)):
    z = jnp.zeros(4, jnp.complex64)
    state = opt.init(z)
    step = jax.jit(lambda z, s: opt.update(jnp.conj(jax.grad(_loss)(z)), s, z))
    for _ in range(1500):
      updates, state = step(z, state)
      z = optax.apply_updates(z, updates)
    np.testing.assert_allclose(np.asarray(z), _TARGET, atol=2e-2)
