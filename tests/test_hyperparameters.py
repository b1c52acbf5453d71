"""The bad-input sweep of issue #12 over the four published APIs.

Every API checks Expectigrad's hyperparameters at construction against
:mod:`expectigrad.hyperparameters`: TypeError for a value that is not a real
number (or, for ``sparse_counter``, not a bool), ValueError out of range, both
naming the argument as that API spells it. Accepted numeric forms (numpy
scalars and 0-d arrays, 0-d tensors) construct and step like Python floats.
"""

import re

import numpy as np
import pytest

import expectigrad
from expectigrad import hyperparameters

# API -> (its names for learning rate, beta, eps, sparse_counter)
_NAMES = {framework: {h.key: h.name_in(framework) for h in hyperparameters.HYPERPARAMETERS}
          for framework in ('jax', 'torch', 'tf1', 'keras')}


def _construct(api, **values):
  """Builds ``api``'s published optimizer with ``values`` keyed by its own names."""
  if api == 'jax':
    return expectigrad.expectigrad(**values)
  if api == 'torch':
    import torch  # pylint: disable=import-outside-toplevel
    return expectigrad.pytorch.Expectigrad([torch.zeros(3, requires_grad=True)], **values)
  if api == 'tf1':
    return expectigrad.tensorflow1.ExpectigradOptimizer(**values)
  return expectigrad.tensorflow2.Expectigrad(**values)


_NOT_REAL = ['0.9', 'abc', None, [0.9], 0.5 + 0j, np.complex64(0.5), True]
_NOT_BOOL = ['False', 0, 1, None, np.bool_(True)]
_OUT_OF_RANGE = {
    'learning_rate': [-1e-3, float('nan'), float('inf')],
    'beta': [1.0, -0.1, float('nan')],
    'eps': [0.0, -1e-8, float('inf')],
}
_APIS = ['jax', 'torch', 'tf1', 'keras']
# torch names the param group a value came from.
_PREFIX = r'(param_groups\[0\]: )?'


@pytest.mark.parametrize('api', _APIS)
@pytest.mark.parametrize('key', ['learning_rate', 'beta', 'eps'])
@pytest.mark.parametrize('value', _NOT_REAL, ids=repr)
def test_a_value_that_is_not_a_real_number_is_a_type_error_naming_the_argument(api, key, value):
  name = _NAMES[api][key]
  with pytest.raises(TypeError, match=rf'^{_PREFIX}{name} must be a number'):
    _construct(api, **{name: value})


@pytest.mark.parametrize('api', _APIS)
@pytest.mark.parametrize('key', ['learning_rate', 'beta', 'eps'])
def test_a_value_out_of_range_is_a_value_error_naming_the_argument_and_range(api, key):
  name = _NAMES[api][key]
  accepted = {'learning_rate': '>= 0', 'beta': 'in [0, 1)', 'eps': '> 0'}[key]
  for value in _OUT_OF_RANGE[key]:
    with pytest.raises(ValueError, match=rf'^{_PREFIX}{name} must be .*{re.escape(accepted)}'):
      _construct(api, **{name: value})


@pytest.mark.parametrize('api', _APIS)
@pytest.mark.parametrize('value', _NOT_BOOL, ids=repr)
def test_sparse_counter_must_be_a_bool(api, value):
  with pytest.raises(TypeError, match=rf'^{_PREFIX}sparse_counter must be a bool'):
    _construct(api, sparse_counter=value)


@pytest.mark.parametrize('api', _APIS)
def test_learning_rate_zero_is_accepted(api):
  _construct(api, **{_NAMES[api]['learning_rate']: 0.0})


@pytest.mark.parametrize('api', ['jax', 'tf1', 'keras'])
def test_learning_rate_schedules_are_accepted_where_the_framework_has_them(api):
  _construct(api, **{_NAMES[api]['learning_rate']: lambda *_: 1e-3})


def test_torch_rejects_a_callable_learning_rate():
  with pytest.raises(TypeError, match=rf'^{_PREFIX}lr must be a number'):
    _construct('torch', lr=lambda: 1e-3)


def test_torch_rejects_tensors_that_are_not_0d_floating_point():
  import torch  # pylint: disable=import-outside-toplevel
  for value in (torch.tensor([0.9]), torch.tensor(1)):
    with pytest.raises(TypeError, match=rf'^{_PREFIX}beta must be a number or a 0-d floating-point tensor'):
      _construct('torch', beta=value)


def _numpy_forms(value):
  return [np.float32(value), np.float64(value), np.array(value), np.array(value, np.float32)]


@pytest.mark.parametrize('api', _APIS)
def test_numpy_scalars_and_0d_arrays_step_like_python_floats(api):
  """Each accepted numpy form gives the same first step as the Python float."""
  expected = _first_step(api, 0.1, 0.9, 1e-8)
  for form in range(4):
    got = _first_step(api, *(_numpy_forms(v)[form] for v in (0.1, 0.9, 1e-8)))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize('api', ['tf1', 'keras'])
def test_tf_constants_as_beta_and_epsilon_step_like_python_floats(api):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  expected = _first_step(api, 0.1, 0.9, 1e-8)
  got = _first_step(api, tf.constant(0.1), tf.constant(0.9), tf.constant(1e-8))
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def _first_step(api, lr, beta, eps):
  """The parameters after one step from [1, -2, 3] with gradient [0.5, 0, -1]."""
  names = _NAMES[api]
  values = {names['learning_rate']: lr, names['beta']: beta, names['eps']: eps}
  x0, g = np.array([1.0, -2.0, 3.0], np.float32), np.array([0.5, 0.0, -1.0], np.float32)
  if api == 'jax':
    import optax  # pylint: disable=import-outside-toplevel
    opt = _construct(api, **values)
    updates, _ = opt.update(g, opt.init(x0), x0)
    return np.asarray(optax.apply_updates(x0, updates))
  if api == 'torch':
    import torch  # pylint: disable=import-outside-toplevel
    x = torch.tensor(x0, requires_grad=True)
    opt = expectigrad.pytorch.Expectigrad([x], **values)
    x.grad = torch.tensor(g)
    opt.step()
    return x.detach().numpy()
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  x = tf.Variable(x0) if api == 'tf1' else __import__('keras').Variable(x0)
  opt = _construct(api, **values)
  opt.apply_gradients([(tf.constant(g), x)])
  return np.asarray(x.numpy())
