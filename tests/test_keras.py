"""The Keras 3 optimizers: reference parity (eager, tf.function, XLA), fit, saving, chains."""

import inspect
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
keras = pytest.importorskip('keras')

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from expectigrad import transforms  # noqa: E402
from expectigrad.bridges import keras as keras_bridge  # noqa: E402
from expectigrad.tensorflow2 import Expectigrad  # noqa: E402
from tests import optax_runs, reference  # noqa: E402

HYPER = dict(lr=reference.QUADRATIC_LR, eps=reference.QUADRATIC_EPS)
MODES = {
    'eager': lambda f: f,
    'tf.function': lambda f: tf.function(f),
    'jit_compile': lambda f: tf.function(f, jit_compile=True),
}


def _run(opt, grad_fn, x0, steps, mode='eager'):
  """Applies ``grad_fn(x, t)`` gradients to one float64 variable; returns the trajectory."""
  x = keras.Variable(np.asarray(x0, np.float64), dtype='float64')
  apply = MODES[mode](lambda g: opt.apply_gradients([(g, x)]))
  trajectory = [x.numpy()]
  for t in range(1, steps + 1):
    apply(tf.constant(grad_fn(trajectory[-1], t)))
    trajectory.append(x.numpy())
  return np.stack(trajectory)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('beta,sparse_counter', reference.CONFIGS)
def test_matches_reference(beta, sparse_counter, mode):
  expected = reference.run_reference(beta=beta, sparse_counter=sparse_counter, **HYPER)
  opt = Expectigrad(reference.QUADRATIC_LR, beta=beta, epsilon=reference.QUADRATIC_EPS,
                    sparse_counter=sparse_counter)
  actual = _run(opt, reference.alternating_quadratic_grad, reference.QUADRATIC_X0,
                reference.QUADRATIC_STEPS, mode)
  assert reference.max_relative_error(actual, expected) < 1e-10


def _custom_chain(learning_rate):
  return optax.chain(
      optax.clip_by_global_norm(1.0),
      transforms.scale_by_ema_rms(0.99, 1e-6),
      transforms.outer_momentum(0.8),
      transforms.scale_by_lr(learning_rate),
  )


def test_custom_chain_with_schedule_matches_jax(x64):
  """A chain with global-norm clipping and a Keras schedule, against the chain in JAX."""
  del x64
  steps, rng = 60, np.random.default_rng(1)
  gradients = [rng.normal(size=3) * 2.0 for _ in range(steps)]
  schedule = keras.optimizers.schedules.PiecewiseConstantDecay([20, 40], [0.1, 0.05, 0.025])
  # Keras's schedules are float32 (whatever the variables' dtype): JAX gets the same values.
  rates = np.array([float(schedule(t)) for t in range(steps)])
  opt = keras_bridge.Optimizer(_custom_chain, learning_rate=schedule)
  actual = _run(opt, lambda x, t: gradients[t - 1], np.ones(3), steps, 'jit_compile')
  expected = optax_runs.trajectory(_custom_chain(lambda count: jnp.asarray(rates)[count]),
                                  np.ones(3), gradients)
  assert reference.max_relative_error(actual, expected) < 1e-10


def _clip_norm(g, norm):
  return g * min(1.0, norm / np.linalg.norm(g))


@pytest.mark.parametrize('kwargs,transform_gradient', [
    (dict(clipvalue=0.5), lambda g: np.clip(g, -0.5, 0.5)),
    (dict(clipnorm=0.5), lambda g: _clip_norm(g, 0.5)),
    (dict(global_clipnorm=0.5), lambda g: _clip_norm(g, 0.5)),
], ids=['clipvalue', 'clipnorm', 'global_clipnorm'])
def test_keras_gradient_clipping_applies_before_the_chain(kwargs, transform_gradient):
  expected = reference.run_reference(lambda x, t: transform_gradient(reference.alternating_quadratic_grad(x, t)),
                                     steps=50, beta=0.9, **HYPER)
  opt = Expectigrad(reference.QUADRATIC_LR, epsilon=reference.QUADRATIC_EPS, **kwargs)
  actual = _run(opt, reference.alternating_quadratic_grad, reference.QUADRATIC_X0, 50)
  assert reference.max_relative_error(actual, expected) < 1e-10


def test_weight_decay_lr_alias_and_inverse_time_decay():
  """Keras's decoupled weight decay, then Expectigrad at lr / (1 + decay * (t - 1))."""
  lr, decay, weight_decay, steps = 0.5, 0.25, 0.125, 50
  opt = Expectigrad(lr=lr, decay=decay, weight_decay=weight_decay, epsilon=reference.QUADRATIC_EPS)
  actual = _run(opt, reference.alternating_quadratic_grad, reference.QUADRATIC_X0, steps)
  expected = reference.ExpectigradReference(reference.QUADRATIC_X0, eps=reference.QUADRATIC_EPS)
  trajectory = [expected.x.copy()]
  for t in range(1, steps + 1):
    # Keras computes learning rates in float32: so does the reference here.
    expected.lr = float(np.float32(lr) / (np.float32(1) + np.float32(decay) * np.float32(t - 1)))
    gradient = reference.alternating_quadratic_grad(expected.x, t)
    expected.x = expected.x - expected.lr * weight_decay * expected.x
    trajectory.append(expected.step(gradient).copy())
  assert reference.max_relative_error(actual, np.stack(trajectory)) < 1e-10


def test_gradient_accumulation_steps_average_before_the_chain():
  steps = 4
  opt = Expectigrad(reference.QUADRATIC_LR, epsilon=reference.QUADRATIC_EPS, gradient_accumulation_steps=2)
  x = keras.Variable(np.asarray(reference.QUADRATIC_X0), dtype='float64')
  gradients = [np.array([1.0, 0.0]), np.array([3.0, 2.0]), np.array([-1.0, 0.0]), np.array([0.0, 0.0])]
  for g in gradients[:steps]:
    opt.apply_gradients([(tf.constant(g), x)])
  expected = reference.ExpectigradReference(reference.QUADRATIC_X0, **HYPER)
  expected.step((gradients[0] + gradients[1]) / 2)
  expected.step((gradients[2] + gradients[3]) / 2)
  assert reference.max_relative_error(x.numpy(), expected.x) < 1e-10


def test_variable_without_gradient_is_left_alone_with_its_state():
  a = keras.Variable([1.0, 2.0], name='a')
  b = keras.Variable([3.0], name='b')
  opt = Expectigrad(0.1)
  opt.build([a, b])
  opt.apply_gradients([(tf.constant([1.0, -1.0]), a), (tf.constant([2.0]), b)])
  b_before, b_state = b.numpy(), {v.name: v.numpy() for v in opt.variables if v.name.startswith('b_')}
  a_before = a.numpy()
  with pytest.warns(UserWarning, match='Gradients do not exist'):
    opt.apply_gradients([(tf.constant([1.0, -1.0]), a), (None, b)])
  assert not np.allclose(a.numpy(), a_before)
  np.testing.assert_array_equal(b.numpy(), b_before)
  assert len(b_state) == 3  # its sums of squares, counter and momentum did not move
  for name, value in b_state.items():
    np.testing.assert_array_equal(next(v for v in opt.variables if v.name == name).numpy(), value)


@pytest.mark.parametrize('unbuilt', [True, False])
def test_first_step_without_a_gradient_for_some_variables_updates_the_others(unbuilt):
  """As keras.optimizers.Adam: building inside the first apply must not lose the step."""
  a, b, c = (keras.Variable([1.0, 2.0], name=n) for n in 'abc')
  c.overwrite_with_gradient = True  # Keras assigns its gradient and skips update_step
  opt = Expectigrad(0.1)
  if not unbuilt:
    opt.build([a, b, c])
  with pytest.warns(UserWarning, match='Gradients do not exist'):
    opt.apply_gradients([(None, a), (tf.ones(2), b), (tf.constant([5.0, 6.0]), c)])
  expected = reference.run_reference(lambda x, t: np.ones(2), np.array([1.0, 2.0]), 1, lr=0.1)
  np.testing.assert_allclose(b.numpy(), expected[-1], rtol=1e-6)
  np.testing.assert_array_equal(a.numpy(), [1.0, 2.0])
  np.testing.assert_array_equal(c.numpy(), [5.0, 6.0])
  assert int(opt.iterations) == 1


def test_unnamed_optimizers_get_unique_snake_case_names_as_keras_adam():
  first, second = Expectigrad(), Expectigrad()
  adam = keras.optimizers.Adam()
  assert re.fullmatch(r'adam(_\d+)?', adam.name)
  assert re.fullmatch(r'expectigrad(_\d+)?', first.name)
  assert re.fullmatch(r'expectigrad_\d+', second.name) and second.name != first.name
  assert Expectigrad(name='mine').name == 'mine'


def test_state_variables_are_named_after_their_variable_and_slot():
  a = keras.Variable([1.0, 2.0], name='a')
  b = keras.Variable([3.0], name='b')
  opt = Expectigrad(0.1)
  opt.build([a, b])
  names = {v.name for v in opt.variables} - {'iteration', 'learning_rate'}
  assert names == {'0_count', '1_count'} | {
      f'{v}_{slot}' for v in 'ab' for slot in ('sum_of_squares', 'nonzero_count', 'momentum')}


def test_get_config_holds_exactly_the_constructor_arguments():
  opt = Expectigrad(0.01, beta=0.5, epsilon=1e-6, sparse_counter=False, decay=0.1, clipnorm=2.0)
  config = opt.get_config()
  keras_arguments = {'weight_decay', 'clipnorm', 'clipvalue', 'global_clipnorm', 'use_ema',
                     'ema_momentum', 'ema_overwrite_frequency', 'loss_scale_factor',
                     'gradient_accumulation_steps'}  # keras.optimizers.Optimizer's own
  own_arguments = set(inspect.signature(Expectigrad).parameters) - {'kwargs'}
  assert set(config) == own_arguments | keras_arguments | {'decay'}
  clone = Expectigrad.from_config(config)
  assert clone.get_config() == config
  assert (clone.beta, clone.epsilon, clone.sparse_counter, clone.decay) == (0.5, 1e-6, False, 0.1)
  assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).get_config() == config


@pytest.mark.parametrize('kwargs,match', [
    (dict(lr=-1.0), 'learning_rate'),
    (dict(beta=1.0), 'beta'),
    (dict(epsilon=-1e-8), 'epsilon'),
    (dict(decay=-0.5), 'decay'),
])
def test_bad_hyperparameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    Expectigrad(**kwargs)


def test_bad_transform_raises():
  with pytest.raises(TypeError, match='transform'):
    keras_bridge.Optimizer('adam')


# --- model.fit on scikit-learn's bundled digits, and .keras saving ---------------------------


@pytest.fixture(scope='module')
def digits():
  datasets = pytest.importorskip('sklearn.datasets')
  x, y = datasets.load_digits(return_X_y=True)
  return (x / 16.0).astype(np.float32), y.astype(np.int32)


def _model():
  keras.utils.set_random_seed(0)
  return keras.Sequential([
      keras.Input((64,)),
      keras.layers.Dense(32, activation='relu'),
      keras.layers.Dense(10),
  ])


def _fit(digits, epochs, **compile_kwargs):
  x, y = digits
  model = _model()
  model.compile(optimizer=Expectigrad(0.01), metrics=['accuracy'],
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **compile_kwargs)
  return model, model.fit(x, y, epochs=epochs, batch_size=64, shuffle=False, verbose=0)


@pytest.fixture(scope='module')
def trained(digits, tmp_path_factory):
  """A model fit with XLA (Keras's default where a GPU is present), and its saved file."""
  model, history = _fit(digits, epochs=3, jit_compile=True)
  path = tmp_path_factory.mktemp('model') / 'digits.keras'
  model.save(path)
  return model, history, path


def test_fit_with_xla_learns_digits(trained):
  model, history, _ = trained
  assert model.jit_compile
  losses = history.history['loss']
  assert losses[-1] < 0.5 * losses[0]
  assert history.history['accuracy'][-1] > 0.85


def test_fit_with_default_settings_learns_digits(digits):
  _, history = _fit(digits, epochs=2)  # jit_compile='auto': XLA off on CPU-only machines
  assert history.history['loss'][-1] < 0.7 * history.history['loss'][0]


def test_saved_model_resumes_identically(trained, digits):
  model, _, path = trained
  x, y = digits
  restored = keras.models.load_model(path)  # no custom_objects
  assert isinstance(restored.optimizer, Expectigrad)
  assert int(restored.optimizer.iterations) == int(model.optimizer.iterations)
  for a, b in zip(model.optimizer.variables, restored.optimizer.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  for m in (model, restored):
    m.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
  for a, b in zip(model.weights, restored.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_load_model_in_a_fresh_process_needs_the_module_imported(trained):
  """Keras imports only its own packages while loading: ``import expectigrad.tensorflow2`` registers the class."""
  _, _, path = trained
  saved = keras.models.load_model(path)  # the model may have trained on since it was saved
  script = textwrap.dedent(f'''
      import keras, numpy as np
      try:
        keras.models.load_model({str(path)!r})
      except TypeError as error:
        print('without import:', 'Could not locate class' in str(error))
      import expectigrad.tensorflow2  # registers 'expectigrad>Expectigrad'
      restored = keras.models.load_model({str(path)!r})
      print(type(restored.optimizer).__name__, int(restored.optimizer.iterations),
            float(sum(np.abs(v.numpy()).sum() for v in restored.optimizer.variables)))
  ''')
  out = subprocess.run([sys.executable, '-c', script], check=True, capture_output=True, text=True)
  without, loaded = out.stdout.strip().splitlines()[-2:]
  assert without == 'without import: True'
  name, iterations, total = loaded.split()
  assert name == 'Expectigrad' and int(iterations) == int(saved.optimizer.iterations) > 0
  assert float(total) == float(sum(np.abs(v.numpy()).sum() for v in saved.optimizer.variables))
