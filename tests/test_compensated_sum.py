"""``compensated_sum``: a Kahan-summed sum of squares, in JAX and through every bridge.

The defining check (issue #12): in float32, starting from a sum of 2**24
(where float32's spacing is 2), adding a squared gradient of 1.0 N times
gives 2**24 + N exactly; the plain sum stays at 2**24.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import expectigrad
from expectigrad import transforms
from tests import reference

START = 2.0**24
STEPS = 200


def _accumulated(compensated_sum, jit):
  rms = transforms.arithmetic_rms(compensated_sum=compensated_sum)
  state = rms.init(jnp.zeros(3, jnp.float32))
  state = state._replace(sum_of_squares=jnp.full(3, START, jnp.float32))
  accumulate = jax.jit(rms.accumulate) if jit else rms.accumulate
  for _ in range(STEPS):
    state = accumulate(jnp.ones(3, jnp.float32), state)
  return np.asarray(state.sum_of_squares)


@pytest.mark.parametrize('jit', [False, True], ids=['eager', 'jit'])
def test_jax_sum_is_exact_with_compensation_and_stuck_without(jit):
  np.testing.assert_array_equal(_accumulated(True, jit), START + STEPS)
  np.testing.assert_array_equal(_accumulated(False, jit), START)


def test_the_option_adds_one_buffer_per_parameter_and_nothing_by_default():
  params = {'w': jnp.ones((2, 3)), 'frozen': None}
  plain = expectigrad.expectigrad(1e-3).init(params)[0]
  compensated = expectigrad.expectigrad(1e-3, compensated_sum=True).init(params)[0]
  assert plain.compensation is None
  assert compensated.compensation['w'].shape == (2, 3)
  assert compensated.compensation['frozen'] is None
  with pytest.raises(TypeError, match='compensated_sum must be a bool'):
    expectigrad.expectigrad(compensated_sum='yes')


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('beta,sparse_counter', reference.CONFIGS)
def test_compensated_chain_matches_the_reference(beta, sparse_counter):
  opt = expectigrad.expectigrad(reference.QUADRATIC_LR, beta=beta, eps=reference.QUADRATIC_EPS,
                                sparse_counter=sparse_counter, compensated_sum=True)
  # Against the reference with an exactly rounded sum: the compensated sum is
  # closer to it than the reference's own running float64 sum.
  expected = reference.run_reference(beta=beta, sparse_counter=sparse_counter, exact_sum=True,
                                     lr=reference.QUADRATIC_LR, eps=reference.QUADRATIC_EPS)
  x = jnp.asarray(reference.QUADRATIC_X0, jnp.float64)
  state, trajectory = opt.init(x), [np.asarray(x)]
  update = jax.jit(opt.update)
  for t in range(1, reference.QUADRATIC_STEPS + 1):
    updates, state = update(jnp.asarray(reference.alternating_quadratic_grad(trajectory[-1], t)),
                            state, x)
    x = optax.apply_updates(x, updates)
    trajectory.append(np.asarray(x))
  assert reference.max_relative_error(np.stack(trajectory), expected) < 1e-10


_COMPENSATED = functools.partial(expectigrad.expectigrad, compensated_sum=True)


@pytest.mark.parametrize('executor,compile', [('torch', False), ('jax', False), ('torch', True),
                                              ('torch', 'torch.compile')],
                         ids=['lowered', 'jax-executor', 'compiled', 'torch.compile'])
def test_torch_bridge_sum_is_exact(executor, compile):
  """Exact in every torch path: compiled, the sum must not be simplified or reordered away."""
  torch = pytest.importorskip('torch')
  from expectigrad.bridges import torch as torch_bridge  # pylint: disable=import-outside-toplevel
  p = torch.zeros(3, requires_grad=True)
  opt = torch_bridge.Optimizer([p], _COMPENSATED, lr=1e-3, executor=executor,
                               compile=compile is True)
  step = torch.compile(opt.step, fullgraph=True) if compile == 'torch.compile' else opt.step
  p.grad = torch.zeros(3)
  step()  # creates the state; a zero gradient adds nothing
  (name,) = [k for k in opt.state[p] if k.endswith('sum_of_squares')]
  assert any(k.endswith('compensation') for k in opt.state[p])
  opt.state[p][name].fill_(START)
  for _ in range(STEPS):
    p.grad = torch.ones(3)
    step()
  np.testing.assert_array_equal(opt.state[p][name].numpy(), START + STEPS)


def test_tf1_bridge_sum_is_exact():
  tf = pytest.importorskip('tensorflow')
  from expectigrad.bridges import tf1 as tf1_bridge  # pylint: disable=import-outside-toplevel
  x = tf.Variable(tf.zeros(3))
  opt = tf1_bridge.Optimizer(_COMPENSATED, learning_rate=1e-3)
  opt.apply_gradients([(tf.zeros(3), x)])
  opt.get_slot(x, 'sum_of_squares').assign(tf.fill([3], START))
  for _ in range(STEPS):
    opt.apply_gradients([(tf.ones(3), x)])
  np.testing.assert_array_equal(opt.get_slot(x, 'sum_of_squares').numpy(), START + STEPS)


def test_keras_bridge_sum_is_exact():
  tf = pytest.importorskip('tensorflow')
  keras = pytest.importorskip('keras')
  from expectigrad.bridges import keras as keras_bridge  # pylint: disable=import-outside-toplevel
  x = keras.Variable(np.zeros(3, np.float32))
  opt = keras_bridge.Optimizer(_COMPENSATED, learning_rate=1e-3)
  opt.apply_gradients([(tf.zeros(3), x)])
  (total,) = [v for v in opt.variables if 'sum_of_squares' in v.path]
  assert any('compensation' in v.path for v in opt.variables)
  total.assign(np.full(3, START, np.float32))
  for _ in range(STEPS):
    opt.apply_gradients([(tf.ones(3), x)])
  np.testing.assert_array_equal(np.asarray(total.numpy()), START + STEPS)
