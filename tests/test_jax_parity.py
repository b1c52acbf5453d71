"""Exact float64 parity of the JAX transforms with the numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import expectigrad
from expectigrad import transforms
from tests import reference


def _hand_built(learning_rate, beta, eps, sparse_counter):
  return optax.chain(
      transforms.scale_by_arithmetic_rms(eps=eps, sparse_counter=sparse_counter),
      transforms.outer_momentum(beta=beta),
      transforms.scale_by_lr(learning_rate),
  )


def run_optax(opt, grad_fn, x0, steps):
  """Runs ``opt`` on numpy gradients; returns the (steps + 1, dim) trajectory."""
  x = jnp.asarray(x0, jnp.float64)
  state = opt.init(x)
  update = jax.jit(opt.update)
  trajectory = [np.asarray(x)]
  for t in range(1, steps + 1):
    g = jnp.asarray(grad_fn(np.asarray(x), t))
    updates, state = update(g, state)
    x = optax.apply_updates(x, updates)
    trajectory.append(np.asarray(x))
  return np.stack(trajectory), state


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('factory', [expectigrad.expectigrad, _hand_built], ids=['alias', 'chain'])
@pytest.mark.parametrize('beta,sparse_counter', reference.CONFIGS)
def test_alternating_quadratic_matches_reference(factory, beta, sparse_counter):
  hyper = dict(lr=reference.QUADRATIC_LR, beta=beta, eps=reference.QUADRATIC_EPS,
               sparse_counter=sparse_counter)
  expected = reference.run_reference(**hyper)
  opt = factory(learning_rate=hyper['lr'], beta=beta, eps=hyper['eps'], sparse_counter=sparse_counter)
  actual, state = run_optax(opt, reference.alternating_quadratic_grad, reference.QUADRATIC_X0,
                            reference.QUADRATIC_STEPS)
  assert actual.dtype == np.float64
  assert reference.max_relative_error(actual, expected) < 1e-10
  assert not np.allclose(expected[-1], expected[0])  # the problem really moved
  rms_state = state[0]
  assert int(rms_state.count) == reference.QUADRATIC_STEPS
  if sparse_counter:
    # x1 sees a zero gradient on every odd step: it is counted half the time.
    np.testing.assert_array_equal(rms_state.nonzero_count, [1000, 500])
  else:
    assert rms_state.nonzero_count is None
  assert (state[1].momentum is None) == (beta == 0)


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('sparse_counter', [True, False])
def test_random_sparse_gradients_match_reference(sparse_counter):
  rng = np.random.default_rng(0)
  dim, steps = 16, 200
  grads = rng.normal(size=(steps, dim)) * (rng.random((steps, dim)) < 0.3)
  grads[:, 0] = 0.0  # a coordinate that never gets a gradient: 0/0 := 0
  hyper = dict(lr=0.01, beta=0.8, eps=1e-3, sparse_counter=sparse_counter)
  expected = reference.run_reference(lambda x, t: grads[t - 1], np.ones(dim), steps, **hyper)
  actual, state = run_optax(
      expectigrad.expectigrad(0.01, 0.8, 1e-3, sparse_counter),
      lambda x, t: grads[t - 1], np.ones(dim), steps)
  assert reference.max_relative_error(actual, expected) < 1e-10
  assert np.all(actual[:, 0] == 1.0)
  if sparse_counter:
    np.testing.assert_array_equal(state[0].nonzero_count, np.count_nonzero(grads, axis=0))


@pytest.mark.usefixtures('x64')
def test_schedule_matches_reference_with_per_step_lr():
  # A float64 schedule (optax.exponential_decay computes in float32).
  schedule = lambda count: 0.1 * 0.99**count  # noqa: E731
  rng = np.random.default_rng(1)
  grads = rng.normal(size=(50, 4))
  ref = reference.ExpectigradReference(np.ones(4), beta=0.9, eps=1e-8)
  expected = []
  for t in range(1, 51):
    ref.lr = 0.1 * 0.99 ** (t - 1)  # optax schedules see the count of earlier steps
    expected.append(ref.step(grads[t - 1]).copy())
  actual, _ = run_optax(expectigrad.expectigrad(schedule), lambda x, t: grads[t - 1], np.ones(4), 50)
  assert reference.max_relative_error(actual[1:], np.stack(expected)) < 1e-10


@pytest.mark.usefixtures('x64')
def test_adam_ablation_chain_is_optax_adam():
  """inner momentum + EMA denominator is Adam: a reference independent of ours."""
  rng = np.random.default_rng(2)
  grads = rng.normal(size=(100, 8))
  adam_like = optax.chain(
      transforms.inner_momentum(transforms.ema_rms(decay=0.999, eps=1e-8), beta=0.9),
      transforms.scale_by_lr(1e-2),
  )
  ours, _ = run_optax(adam_like, lambda x, t: grads[t - 1], np.ones(8), 100)
  theirs, _ = run_optax(optax.adam(1e-2, b1=0.9, b2=0.999, eps=1e-8),
                        lambda x, t: grads[t - 1], np.ones(8), 100)
  assert reference.max_relative_error(ours, theirs) < 1e-10


@pytest.mark.usefixtures('x64')
def test_ema_outer_ablation_is_rmsprop_then_momentum():
  """EMA denominator + outer momentum: RMSProp-scaled steps averaged afterwards."""
  rng = np.random.default_rng(3)
  grads = rng.normal(size=(60, 5))
  chain = optax.chain(transforms.scale_by_ema_rms(0.99, 1e-8, bias_correction=False),
                      transforms.outer_momentum(0.9), transforms.scale_by_lr(1e-2))
  actual, _ = run_optax(chain, lambda x, t: grads[t - 1], np.ones(5), 60)
  x, v, m = np.ones(5), np.zeros(5), np.zeros(5)
  for t in range(1, 61):
    g = grads[t - 1]
    v = 0.99 * v + 0.01 * g**2
    m = 0.9 * m + 0.1 * g / (1e-8 + np.sqrt(v))
    x = x - 1e-2 * m / (1 - 0.9**t)
  assert reference.max_relative_error(actual[-1], x) < 1e-10


@pytest.mark.usefixtures('x64')
def test_inner_momentum_with_arithmetic_rms_differs_from_outer():
  """The placement matters: same pieces, other order, another trajectory."""
  rng = np.random.default_rng(4)
  grads = rng.normal(size=(30, 3)) * np.linspace(0.1, 10, 30)[:, None]
  inner = optax.chain(transforms.inner_momentum(transforms.arithmetic_rms(1e-8), 0.9),
                      transforms.scale_by_lr(0.1))
  actual, _ = run_optax(inner, lambda x, t: grads[t - 1], np.zeros(3), 30)
  x, s, n, m = np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3)
  for t in range(1, 31):
    g = grads[t - 1]
    s, n = s + g**2, n + np.sign(g**2)
    m = 0.9 * m + 0.1 * g
    x = x - 0.1 * (m / (1 - 0.9**t)) / (1e-8 + np.sqrt(s / n))
  assert reference.max_relative_error(actual[-1], x) < 1e-10
  outer, _ = run_optax(expectigrad.expectigrad(0.1, 0.9, 1e-8), lambda x, t: grads[t - 1],
                       np.zeros(3), 30)
  assert reference.max_relative_error(outer[-1], x) > 1e-3
