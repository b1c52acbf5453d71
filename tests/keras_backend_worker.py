"""Runs the Keras optimizer checks on one Keras backend, in its own process.

Keras fixes its backend at import, so ``tests/test_keras_backends.py`` starts
this script once per backend (``KERAS_BACKEND`` set, JAX's 64-bit mode on so
that float64 Keras variables exist on the JAX backend) and reads one JSON
object from the last line of its output: ``{check name: None | 'SKIP: why' |
the failure's traceback}``.

Usage: ``python -m tests.keras_backend_worker DIR [--load-only] [--load B ...]``:
saves ``DIR/<backend>.keras`` (a model 10 steps into the alternating
quadratic) and continues every ``DIR/<B>.keras`` saved by backend ``B``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
import warnings
from typing import Callable

import numpy as np

from tests import optax_runs, reference

CHECKS: dict[str, Callable[[], None]] = {}
HYPER = dict(lr=reference.QUADRATIC_LR, eps=reference.QUADRATIC_EPS)
keras = None  # imported in main(), after KERAS_BACKEND is set
Expectigrad = None
BACKEND = os.environ.get('KERAS_BACKEND', 'tensorflow')


def check(*backends: str):
  """Registers a check, for the given backends only (default: all)."""
  def register(fn):
    if not backends or BACKEND in backends:
      CHECKS[fn.__name__] = fn
    return fn
  return register


class Skip(Exception):
  pass


# -- helpers ----------------------------------------------------------------------------------


def to_numpy(x) -> np.ndarray:
  return np.asarray(keras.ops.convert_to_numpy(x))


def tensor(value, dtype='float64'):
  return keras.ops.convert_to_tensor(np.asarray(value), dtype=dtype)


def run(opt, grad_fn=reference.alternating_quadratic_grad, x0=reference.QUADRATIC_X0,
        steps=reference.QUADRATIC_STEPS, scale=1.0, variable=None):
  """Applies ``grad_fn(x, t) * scale`` to one float64 variable; returns the trajectory."""
  x = variable if variable is not None else keras.Variable(np.asarray(x0, np.float64),
                                                           dtype='float64')
  trajectory = [to_numpy(x)]
  for t in range(1, steps + 1):
    opt.apply_gradients([(tensor(grad_fn(trajectory[-1], t) * scale), x)])
    trajectory.append(to_numpy(x))
  return np.stack(trajectory)


def assert_matches(actual, expected, tolerance=1e-10):
  error = reference.max_relative_error(actual, expected)
  assert error < tolerance, f'max relative error {error:.3g} >= {tolerance}'


def optimizer(**kwargs):
  kwargs.setdefault('epsilon', reference.QUADRATIC_EPS)
  return Expectigrad(kwargs.pop('learning_rate', reference.QUADRATIC_LR), **kwargs)


def _clip_norm(g, norm):
  return g * min(1.0, norm / np.linalg.norm(g))


# -- parity with the reference ---------------------------------------------------------------


@check()
def parity_custom_loop():
  """1000 eager steps per configuration, float64, against the numpy reference."""
  for beta, sparse_counter in reference.CONFIGS:
    expected = reference.run_reference(beta=beta, sparse_counter=sparse_counter, **HYPER)
    actual = run(optimizer(beta=beta, sparse_counter=sparse_counter))
    assert_matches(actual, expected)


def run_jitted(opt, steps, scale=1.0):
  """Keras's JAX trainer path: ``stateless_apply`` inside ``jax.jit``; the trajectory."""
  import jax  # pylint: disable=import-outside-toplevel
  x = keras.Variable(reference.QUADRATIC_X0, dtype='float64')
  opt.build([x])
  step = jax.jit(lambda opt_vars, value, g: opt.stateless_apply(opt_vars, [g], [value]))
  opt_vars, value, trajectory = [v.value for v in opt.variables], x.value, [to_numpy(x)]
  for t in range(1, steps + 1):
    g = tensor(reference.alternating_quadratic_grad(trajectory[-1], t) * scale)
    (value,), opt_vars = step(opt_vars, value, g)
    trajectory.append(np.asarray(value))
  return np.stack(trajectory)


@check('jax')
def parity_jitted_stateless_apply():
  for beta, sparse_counter in reference.CONFIGS:
    expected = reference.run_reference(beta=beta, sparse_counter=sparse_counter, steps=300, **HYPER)
    assert_matches(run_jitted(optimizer(beta=beta, sparse_counter=sparse_counter), 300), expected)


@check('torch')
def parity_lowered_torch_program():
  """The lowered torch program (GPU and torch.compile path), run eagerly on CPU here."""
  from expectigrad.bridges import _torch_executor  # pylint: disable=import-outside-toplevel
  default, _torch_executor.CPU_DEFAULT = _torch_executor.CPU_DEFAULT, 'torch'
  try:
    for beta, sparse_counter in reference.CONFIGS:
      expected = reference.run_reference(beta=beta, sparse_counter=sparse_counter, steps=300, **HYPER)
      assert_matches(run(optimizer(beta=beta, sparse_counter=sparse_counter), steps=300), expected)
    sparse_gradients_equal_dense()
  finally:
    _torch_executor.CPU_DEFAULT = default


@check('tensorflow')
def parity_tf_function_and_xla():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  expected = reference.run_reference(beta=0.9, sparse_counter=True, steps=200, **HYPER)
  for jit_compile in (False, True):
    opt = optimizer()
    x = keras.Variable(reference.QUADRATIC_X0, dtype='float64')
    apply = tf.function(lambda g: opt.apply_gradients([(g, x)]), jit_compile=jit_compile)
    trajectory = [to_numpy(x)]
    for t in range(1, 201):
      apply(tensor(reference.alternating_quadratic_grad(trajectory[-1], t)))
      trajectory.append(to_numpy(x))
    assert_matches(np.stack(trajectory), expected)


# -- Keras's own optimizer features -----------------------------------------------------------


def keras_sgd_result(x, gradient, **kwargs):
  """What ``keras.optimizers.SGD(**kwargs)`` makes of ``x`` with this gradient (float64).

  Keras's own clipping and weight decay, as this backend computes them (on
  torch Keras rounds the clipping scale and the decay factor to float32),
  read through its public API: with learning rate 1 and x = 0, SGD leaves
  minus the clipped gradient; with a zero gradient, the decayed x.
  """
  variable = keras.Variable(np.asarray(x, np.float64), dtype='float64')
  keras.optimizers.SGD(**kwargs).apply_gradients([(tensor(gradient), variable)])
  return to_numpy(variable)


@check()
def gradient_clipping():
  """clipvalue, clipnorm, global_clipnorm: Keras's clipping, then the chain."""
  for kwargs, formula in [
      (dict(clipvalue=0.5), lambda g: np.clip(g, -0.5, 0.5)),
      (dict(clipnorm=0.5), lambda g: _clip_norm(g, 0.5)),
      (dict(global_clipnorm=0.5), lambda g: _clip_norm(g, 0.5)),
  ]:
    def clipped(x, t, kwargs=kwargs, formula=formula):
      g = reference.alternating_quadratic_grad(x, t)
      keras_clipped = -keras_sgd_result(np.zeros_like(g), g, learning_rate=1.0, **kwargs)
      np.testing.assert_allclose(keras_clipped, formula(g), rtol=1e-6)
      return keras_clipped
    expected = reference.run_reference(clipped, steps=50, beta=0.9, **HYPER)
    assert_matches(run(optimizer(**kwargs), steps=50), expected)


@check()
def weight_decay_lr_alias_and_inverse_time_decay():
  """Keras's decoupled weight decay, then Expectigrad at lr / (1 + decay * (t - 1))."""
  lr, decay, weight_decay, steps = 0.5, 0.25, 0.125, 50
  actual = run(Expectigrad(lr=lr, decay=decay, weight_decay=weight_decay,
                           epsilon=reference.QUADRATIC_EPS), steps=steps)
  ref = reference.ExpectigradReference(reference.QUADRATIC_X0, eps=reference.QUADRATIC_EPS)
  trajectory = [ref.x.copy()]
  for t in range(1, steps + 1):
    # Keras computes learning rates in float32: so does the reference here.
    ref.lr = float(np.float32(lr) / (np.float32(1) + np.float32(decay) * np.float32(t - 1)))
    gradient = reference.alternating_quadratic_grad(ref.x, t)
    decayed = keras_sgd_result(ref.x, np.zeros(2), learning_rate=ref.lr, weight_decay=weight_decay)
    np.testing.assert_allclose(decayed, ref.x - ref.lr * weight_decay * ref.x, rtol=1e-6)
    ref.x = decayed
    trajectory.append(ref.step(gradient).copy())
  assert_matches(actual, np.stack(trajectory))


@check()
def gradient_accumulation_steps():
  opt = optimizer(gradient_accumulation_steps=2)
  x = keras.Variable(reference.QUADRATIC_X0, dtype='float64')
  gradients = [np.array([1.0, 0.0]), np.array([3.0, 2.0]), np.array([-1.0, 0.0]), np.array([0.5, 0.0])]
  for g in gradients:
    opt.apply_gradients([(tensor(g), x)])
  ref = reference.ExpectigradReference(reference.QUADRATIC_X0, **HYPER)
  ref.step((gradients[0] + gradients[1]) / 2)
  ref.step((gradients[2] + gradients[3]) / 2)
  assert_matches(to_numpy(x), ref.x)


@check()
def exponential_moving_average():
  """use_ema: the trajectory is untouched; finalize_variable_values writes Keras's average."""
  steps, momentum = 40, 0.75
  opt = optimizer(use_ema=True, ema_momentum=momentum)
  x = keras.Variable(reference.QUADRATIC_X0, dtype='float64')
  actual = run(opt, steps=steps, variable=x)
  expected = reference.run_reference(steps=steps, beta=0.9, **HYPER)
  assert_matches(actual, expected)
  average = expected[1]  # Keras: the first average is the first new value
  for value in expected[2:]:
    average = momentum * average + (1 - momentum) * value
  opt.finalize_variable_values([x])
  assert_matches(to_numpy(x), average)


@check()
def loss_scale_optimizer():
  """Scaled gradients (scale 2**4, exact) are unscaled before the chain.

  On JAX it runs as in ``fit``, jitted: Keras's LossScaleOptimizer cannot
  apply eagerly there (it leaks a tracer, with keras.optimizers.Adam too).
  """
  opt = keras.optimizers.LossScaleOptimizer(optimizer(), initial_scale=2.0**4)
  actual = (run_jitted(opt, 100, scale=2.0**4) if BACKEND == 'jax'
            else run(opt, steps=100, scale=2.0**4))
  assert_matches(actual, reference.run_reference(steps=100, beta=0.9, **HYPER))


@check()
def learning_rate_schedule_and_custom_chain():
  """A bridged chain (global-norm clipping, EMA denominator, momentum) under a Keras schedule."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from expectigrad import transforms  # pylint: disable=import-outside-toplevel
  from expectigrad.bridges import keras as bridge  # pylint: disable=import-outside-toplevel

  def chain(learning_rate):
    return optax.chain(optax.clip_by_global_norm(1.0), transforms.scale_by_ema_rms(0.99, 1e-6),
                       transforms.outer_momentum(0.8), transforms.scale_by_lr(learning_rate))

  steps, rng = 60, np.random.default_rng(1)
  gradients = [rng.normal(size=3) * 2.0 for _ in range(steps)]
  schedule = keras.optimizers.schedules.PiecewiseConstantDecay([20, 40], [0.1, 0.05, 0.025])
  actual = run(bridge.Optimizer(chain, learning_rate=schedule), lambda x, t: gradients[t - 1],
               np.ones(3), steps)
  # Keras's schedules are float32 (whatever the variables' dtype): JAX gets the same values.
  rates = np.array([float(to_numpy(schedule(t))) for t in range(steps)])
  expected = optax_runs.trajectory(chain(lambda count: jnp.asarray(rates)[count]), np.ones(3),
                                  gradients)
  assert_matches(actual, expected)


@check()
def variable_without_gradient_keeps_its_state():
  a = keras.Variable(np.array([1.0, 2.0]), name='a', dtype='float64')
  b = keras.Variable(np.array([3.0]), name='b', dtype='float64')
  opt = optimizer()
  opt.apply_gradients([(tensor([1.0, -1.0]), a), (tensor([2.0]), b)])
  b_before = to_numpy(b)
  b_state = {v.name: to_numpy(v) for v in opt.variables if v.name.startswith('b_')}
  assert len(b_state) == 3, sorted(b_state)
  a_before = to_numpy(a)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    opt.apply_gradients([(tensor([1.0, -1.0]), a), (None, b)])
  assert any('Gradients do not exist' in str(w.message) for w in caught)
  assert not np.allclose(to_numpy(a), a_before)
  np.testing.assert_array_equal(to_numpy(b), b_before)
  for v in opt.variables:
    if v.name in b_state:
      np.testing.assert_array_equal(to_numpy(v), b_state[v.name])


@check()
def first_step_without_some_gradients_updates_the_others():
  """Building inside the first apply must not lose the step (as keras.optimizers.Adam)."""
  a, b, c = (keras.Variable(np.array([1.0, 2.0]), dtype='float64', name=n) for n in 'abc')
  c.overwrite_with_gradient = True  # Keras assigns its gradient and skips update_step
  opt = optimizer(learning_rate=0.125)  # exact in Keras's float32 learning-rate variable
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # Keras warns about a's missing gradient
    opt.apply_gradients([(None, a), (tensor([1.0, 1.0]), b), (tensor([5.0, 6.0]), c)])
  expected = reference.run_reference(lambda x, t: np.ones(2), np.array([1.0, 2.0]), 1, lr=0.125,
                                     eps=reference.QUADRATIC_EPS)
  assert_matches(to_numpy(b), expected[-1])
  np.testing.assert_array_equal(to_numpy(a), [1.0, 2.0])
  np.testing.assert_array_equal(to_numpy(c), [5.0, 6.0])
  assert int(to_numpy(opt.iterations)) == 1


@check()
def unnamed_optimizers_get_unique_snake_case_names():
  first, second = Expectigrad(), Expectigrad()
  assert re.fullmatch(r'expectigrad(_\d+)?', first.name), first.name
  assert re.fullmatch(r'expectigrad_\d+', second.name) and second.name != first.name


@check()
def get_config_from_config():
  opt = Expectigrad(0.01, beta=0.5, epsilon=1e-6, sparse_counter=False, decay=0.1, clipnorm=2.0)
  config = opt.get_config()
  clone = Expectigrad.from_config(config)
  assert clone.get_config() == config
  assert (clone.beta, clone.epsilon, clone.sparse_counter, clone.decay) == (0.5, 1e-6, False, 0.1)
  assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).get_config() == config


# -- model.fit and .keras files ------------------------------------------------------------


def _regression():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 8)).astype(np.float32)
  y = (x @ rng.normal(size=(8, 1)) + 0.1 * rng.normal(size=(256, 1))).astype(np.float32)
  return x, y


def _model():
  keras.utils.set_random_seed(0)
  return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation='relu'),
                           keras.layers.Dense(1)])


@check()
def fit_save_load_resumes_bit_identically():
  import tempfile  # pylint: disable=import-outside-toplevel
  x, y = _regression()
  model = _model()
  model.compile(optimizer=Expectigrad(0.01), loss='mse')
  history = model.fit(x, y, epochs=8, batch_size=32, shuffle=False, verbose=0)
  losses = history.history['loss']
  assert losses[-1] < 0.5 * losses[0], losses
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, 'model.keras')
    model.save(path)
    restored = keras.models.load_model(path)
  assert isinstance(restored.optimizer, Expectigrad)
  assert int(to_numpy(restored.optimizer.iterations)) == int(to_numpy(model.optimizer.iterations))
  for a, b in zip(model.optimizer.variables, restored.optimizer.variables):
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
  for m in (model, restored):
    m.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
  for a, b in zip(model.weights, restored.weights):
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


CROSS_STEPS = 10


def _quadratic_model(opt):
  model = keras.Sequential([keras.Input((2,)),
                            keras.layers.Dense(1, use_bias=False, dtype='float64', name='dense')])
  model.compile(optimizer=opt, loss='mse')
  model.layers[0].kernel.assign(np.reshape(reference.QUADRATIC_X0, (2, 1)))
  return model


def _continue(model, first, last):
  kernel = model.layers[0].kernel
  for t in range(first, last + 1):
    g = reference.alternating_quadratic_grad(to_numpy(kernel).ravel(), t)
    model.optimizer.apply_gradients([(tensor(g.reshape(2, 1)), kernel)])
  return to_numpy(kernel).ravel()


def save_for_other_backends(folder):
  model = _quadratic_model(optimizer())
  _continue(model, 1, CROSS_STEPS)
  model.save(os.path.join(folder, f'{BACKEND}.keras'))


def continue_from(folder, backend):
  """Loads a file another backend saved CROSS_STEPS steps in; continues to twice that."""
  restored = keras.models.load_model(os.path.join(folder, f'{backend}.keras'))
  assert isinstance(restored.optimizer, Expectigrad)
  assert int(to_numpy(restored.optimizer.iterations)) == CROSS_STEPS
  actual = _continue(restored, CROSS_STEPS + 1, 2 * CROSS_STEPS)
  expected = reference.run_reference(steps=2 * CROSS_STEPS, beta=0.9, **HYPER)[-1]
  assert_matches(actual, expected)


# -- Keras's contracts -----------------------------------------------------------------------


def _sparse_gradient(values, rows, shape):
  """A backend-native sparse gradient with these rows (duplicates allowed)."""
  if BACKEND == 'tensorflow':
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.IndexedSlices(tf.constant(values), tf.constant(rows), tf.constant(shape))
  if BACKEND == 'jax':
    import jax.experimental.sparse as jax_sparse  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    rows = np.asarray(rows)
    indices = np.stack([np.repeat(rows, shape[1]), np.tile(np.arange(shape[1]), len(rows))], 1)
    return jax_sparse.BCOO((jnp.asarray(np.ravel(values)), jnp.asarray(indices)), shape=shape)
  import torch  # pylint: disable=import-outside-toplevel
  rows = np.asarray(rows)
  indices = np.stack([np.repeat(rows, shape[1]), np.tile(np.arange(shape[1]), len(rows))])
  return torch.sparse_coo_tensor(torch.as_tensor(indices), torch.as_tensor(np.ravel(values)), shape)


@check()
def sparse_gradients_equal_dense():
  """Duplicate rows summed before squaring; untouched rows get a zero gradient."""
  rng = np.random.default_rng(0)
  shape, rows = (5, 3), [0, 2, 2]
  sparse_var = keras.Variable(np.ones(shape), dtype='float64')
  dense_var = keras.Variable(np.ones(shape), dtype='float64')
  sparse_opt, dense_opt = optimizer(), optimizer()
  ref = reference.ExpectigradReference(np.ones(15), **HYPER)
  for _ in range(6):
    values = rng.normal(size=(len(rows), shape[1]))
    dense = np.zeros(shape)
    np.add.at(dense, rows, values)
    sparse_opt.apply_gradients([(_sparse_gradient(values, rows, shape), sparse_var)])
    dense_opt.apply_gradients([(tensor(dense), dense_var)])
    ref.step(dense.ravel())
  np.testing.assert_array_equal(to_numpy(sparse_var), to_numpy(dense_var))
  assert_matches(to_numpy(dense_var).ravel(), ref.x)


@check()
def updates_go_through_the_optimizers_assign_methods():
  """Keras's contract (its optimizer_sparse_test): no variable is written directly."""
  from unittest import mock  # pylint: disable=import-outside-toplevel
  model_variable = keras.Variable(np.ones((5, 10)), dtype='float32')
  opt = optimizer()
  variable_class = (model_variable._value.__class__ if BACKEND == 'tensorflow'  # pylint: disable=protected-access
                    else model_variable.__class__)
  written = []

  def optimizer_assign(variable, value):
    written.append(variable)

  def direct(variable, value):
    if len(variable.shape):
      raise AssertionError('a variable was written directly, not through optimizer.assign')

  with mock.patch.object(opt, '_apply_weight_decay', autospec=True), \
       mock.patch.object(opt, 'assign', autospec=True, side_effect=optimizer_assign), \
       mock.patch.object(opt, 'assign_add', autospec=True, side_effect=optimizer_assign), \
       mock.patch.object(opt, 'assign_sub', autospec=True, side_effect=optimizer_assign), \
       mock.patch.object(variable_class, 'assign', autospec=True, side_effect=direct), \
       mock.patch.object(variable_class, 'assign_add', autospec=True, side_effect=direct), \
       mock.patch.object(variable_class, 'assign_sub', autospec=True, side_effect=direct):
    opt.apply([tensor(np.full((5, 10), 0.5), 'float32')], [model_variable])
  unwrap = lambda v: getattr(v, '_value', v) if BACKEND == 'tensorflow' else v
  targets = {id(unwrap(v)) for v in written}
  expected = [model_variable] + [v for v in opt.variables if v.name not in ('iteration', 'learning_rate')]
  assert all(id(unwrap(v)) in targets for v in expected), 'some variable was not written'


@check()
def wrong_shape_gradient_raises_before_anything_changes():
  x = keras.Variable(np.ones(3), dtype='float64', name='w')
  opt = optimizer()
  try:
    opt.apply_gradients([(tensor(np.ones((3, 1))), x)])
  except ValueError as error:
    assert "'w'" in str(error) and '(3, 1)' in str(error) and '(3,)' in str(error), error
  else:
    raise AssertionError('no ValueError for a (3, 1) gradient of a (3,) variable')
  assert not opt.built and int(to_numpy(opt.iterations)) == 0
  np.testing.assert_array_equal(to_numpy(x), np.ones(3))
  opt.apply_gradients([(tensor(np.ones(3)), x)])
  before = [to_numpy(v) for v in opt.variables] + [to_numpy(x)]
  try:
    opt.apply_gradients([(tensor(np.ones((1, 3))), x)])
  except ValueError:
    pass
  else:
    raise AssertionError('no ValueError for a (1, 3) gradient of a (3,) variable')
  for old, new in zip(before, [to_numpy(v) for v in opt.variables] + [to_numpy(x)]):
    np.testing.assert_array_equal(old, new)


@check()
def integer_and_complex_variables_raise_naming_the_variable():
  cases = [('int32', np.ones(3, np.int32)), ('complex64', np.ones(3, np.complex64))]
  for dtype, value in cases:
    try:
      variable = keras.Variable(value, dtype=dtype, name=f'v_{dtype}')
    except Exception:  # pylint: disable=broad-except
      if BACKEND == 'tensorflow':
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        variable = tf.Variable(value, name=f'v_{dtype}')
      else:
        continue  # the backend has no such Keras variables
    opt = optimizer()
    try:
      opt.apply_gradients([(keras.ops.convert_to_tensor(value), variable)])
    except TypeError as error:
      assert f'v_{dtype}' in str(error) and dtype in str(error), error
    else:
      raise AssertionError(f'no TypeError for a {dtype} variable')
    assert not opt.built and int(to_numpy(opt.iterations)) == 0
    np.testing.assert_array_equal(to_numpy(variable), value)


@check('tensorflow')
def plain_tf_variables_work_as_with_keras_adam():
  """Keras's own test_mixed_with_tf_variables, and parity for a tf.Variable."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
  tf_v = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
  opt = Expectigrad(1.0)
  grads = tf.ones((2, 2))
  opt.apply_gradients([(grads, v), (grads, tf_v)])
  assert int(opt.iterations) == 1
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    opt.apply_gradients([(grads, v), (None, tf_v)])
  assert any('Gradients do not exist' in str(w.message) for w in caught)
  assert int(opt.iterations) == 2
  adam = keras.optimizers.Adam()
  adam.build([tf.Variable([1.0])])
  ours = optimizer()
  ours.build([tf.Variable([1.0])])
  assert {v.name.split('_')[0] for v in adam.variables if '_' in v.name} <= {
      v.name.split('_')[0] for v in ours.variables}  # named after the variable, like Keras's
  x = tf.Variable(reference.QUADRATIC_X0, dtype=tf.float64)
  expected = reference.run_reference(beta=0.9, steps=200, **HYPER)
  assert_matches(run(optimizer(), steps=200, variable=x), expected)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('folder')
  parser.add_argument('--load', nargs='*', default=[])
  parser.add_argument('--load-only', action='store_true')
  args = parser.parse_args()
  global keras, Expectigrad  # pylint: disable=global-statement
  import keras as keras_module  # pylint: disable=import-outside-toplevel
  import expectigrad.tensorflow2  # pylint: disable=import-outside-toplevel
  keras, Expectigrad = keras_module, expectigrad.tensorflow2.Expectigrad
  assert keras.backend.backend() == BACKEND, keras.backend.backend()
  results: dict[str, str | None] = {}
  todo = [] if args.load_only else list(CHECKS.items())
  if not args.load_only:
    todo.append(('save', lambda: save_for_other_backends(args.folder)))
  todo += [(f'load_{b}', lambda b=b: continue_from(args.folder, b)) for b in args.load]
  for name, fn in todo:
    try:
      fn()
      results[name] = None
    except Skip as skip:
      results[name] = f'SKIP: {skip}'
    except Exception:  # pylint: disable=broad-except
      results[name] = traceback.format_exc()
  sys.stdout.write('\n' + json.dumps(results) + '\n')
  sys.stdout.flush()
  os._exit(0)  # pylint: disable=protected-access  (skip slow interpreter teardown)


if __name__ == '__main__':
  main()
