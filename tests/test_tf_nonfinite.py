"""Non-finite gradients in TF1 and Keras follow the project policy (see test_jax_nonfinite.py).

By default a NaN/Inf gradient element makes only its own parameter element
non-finite; ``optax.apply_if_finite`` around the chain, run through the
bridges unchanged, skips the whole step and leaves the state untouched.
"""

import numpy as np
import optax
import pytest

tf = pytest.importorskip('tensorflow')
keras = pytest.importorskip('keras')

import expectigrad  # noqa: E402
from expectigrad.bridges import keras as keras_bridge  # noqa: E402
from expectigrad.bridges import tf1 as tf1_bridge  # noqa: E402
from expectigrad.tensorflow1 import ExpectigradOptimizer  # noqa: E402
from expectigrad.tensorflow2 import Expectigrad  # noqa: E402
from tests import reference  # noqa: E402


def _tf1_state(opt, x) -> dict:
  """The TF1 optimizer's slots of ``x`` and its non-slot variables, as numpy."""
  state = {name: opt.get_slot(x, name).numpy() for name in opt.get_slot_names()}
  state.update({v.name.split(':')[0]: v.numpy() for v in opt._non_slot_dict.values()})  # pylint: disable=protected-access
  return state


def _keras_state(opt, x) -> dict:
  del x
  return {v.path: v.numpy() for v in opt.variables}


FRAMEWORKS = {
    'tf1': (lambda values: tf.Variable(values), tf1_bridge.Optimizer, ExpectigradOptimizer, _tf1_state),
    'keras': (lambda values: keras.Variable(values, dtype=values.dtype.name), keras_bridge.Optimizer, Expectigrad, _keras_state),
}


@pytest.mark.parametrize('framework', FRAMEWORKS)
@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_default_propagates_only_into_the_affected_element(framework, bad):
  make_variable, _, expectigrad_optimizer, _ = FRAMEWORKS[framework]
  grads = np.random.default_rng(0).normal(size=(10, 4))
  grads[5, 2] = bad
  x = make_variable(np.ones(4))
  opt = expectigrad_optimizer(0.125)  # exact in Keras's float32 learning-rate variable
  for g in grads:
    opt.apply_gradients([(tf.constant(g), x)])
  expected = reference.run_reference(lambda x, t: grads[t - 1], np.ones(4), 10, lr=0.125, beta=0.9,
                                     eps=1e-8)[-1]
  got = x.numpy()
  assert np.isnan(got[2])
  assert reference.max_relative_error(got[[0, 1, 3]], expected[[0, 1, 3]]) < 1e-10


@pytest.mark.parametrize('framework', FRAMEWORKS)
def test_apply_if_finite_chain_skips_the_step_and_leaves_state_untouched(framework):
  make_variable, bridge_optimizer, _, read_state = FRAMEWORKS[framework]
  x = make_variable(np.ones(3, np.float32))
  opt = bridge_optimizer(optax.apply_if_finite(expectigrad.expectigrad(0.1), max_consecutive_errors=1000))
  opt.apply_gradients([(tf.constant([1.0, -2.0, 0.5]), x)])
  params, state = x.numpy(), read_state(opt, x)
  opt.apply_gradients([(tf.constant([1.0, np.inf, 0.5]), x)])
  np.testing.assert_array_equal(x.numpy(), params)
  after = read_state(opt, x)
  inner = [name for name in state if 'inner_state' in name]
  assert len(inner) == 5  # two step counts, sums of squares, nonzero counts, momentum
  for name in inner:
    np.testing.assert_array_equal(after[name], state[name], err_msg=name)
  total = next(value for name, value in after.items() if name.endswith('total_notfinite'))
  assert int(total) == 1
  opt.apply_gradients([(tf.constant([1.0, -2.0, 0.5]), x)])  # the next finite step goes ahead
  assert not np.array_equal(x.numpy(), params)
