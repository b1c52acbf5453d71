"""The TF1 optimizer: parity with the numpy reference in Sessions and eagerly, IndexedSlices."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')

from expectigrad.bridges import tf1 as tf1_bridge  # noqa: E402
from expectigrad.tensorflow1 import ExpectigradOptimizer  # noqa: E402
from tests import reference  # noqa: E402

HYPER = dict(lr=reference.QUADRATIC_LR, eps=reference.QUADRATIC_EPS)


def _optimizer(beta, sparse_counter, learning_rate=reference.QUADRATIC_LR):
  return ExpectigradOptimizer(learning_rate, beta=beta, epsilon=reference.QUADRATIC_EPS,
                              sparse_counter=sparse_counter)


def _run_session(beta, sparse_counter, use_resource, learning_rate=reference.QUADRATIC_LR):
  """The alternating quadratic in a graph Session, gradients fed from numpy."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.Variable(reference.QUADRATIC_X0, dtype=tf.float64, use_resource=use_resource)
    gradient = tf.compat.v1.placeholder(tf.float64, [2])
    global_step = tf.compat.v1.train.get_or_create_global_step()
    opt = _optimizer(beta, sparse_counter, learning_rate)
    train_op = opt.apply_gradients([(gradient, x)], global_step=global_step)
    slots = {name: opt.get_slot(x, name) for name in opt.get_slot_names()}
    init = tf.compat.v1.global_variables_initializer()
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(init)
    trajectory = [session.run(x)]
    for t in range(1, reference.QUADRATIC_STEPS + 1):
      session.run(train_op, {gradient: reference.alternating_quadratic_grad(trajectory[-1], t)})
      trajectory.append(session.run(x))
    return np.stack(trajectory), session.run(slots), session.run(global_step)


@pytest.mark.parametrize('beta,sparse_counter', reference.CONFIGS)
def test_session_matches_reference(beta, sparse_counter):
  expected = reference.run_reference(beta=beta, sparse_counter=sparse_counter, **HYPER)
  actual, slots, global_step = _run_session(beta, sparse_counter, use_resource=True)
  assert reference.max_relative_error(actual, expected) < 1e-10
  assert global_step == reference.QUADRATIC_STEPS
  expected_slots = {'sum_of_squares'}
  expected_slots |= {'momentum'} if beta > 0 else set()
  expected_slots |= {'nonzero_count'} if sparse_counter else set()
  assert set(slots) == expected_slots
  if sparse_counter:
    np.testing.assert_array_equal(slots['nonzero_count'], [1000, 500])


def test_session_ref_variables_and_tensor_learning_rate():
  expected = reference.run_reference(beta=0.9, sparse_counter=True, **HYPER)
  actual, _, _ = _run_session(0.9, True, use_resource=False,
                              learning_rate=lambda: tf.constant(reference.QUADRATIC_LR, tf.float64))
  assert reference.max_relative_error(actual, expected) < 1e-10


def test_eager_minimize_with_callable_learning_rate_matches_reference():
  expected = reference.run_reference(beta=0.9, sparse_counter=True, steps=200, **HYPER)
  x = tf.Variable(reference.QUADRATIC_X0, dtype=tf.float64)
  opt = _optimizer(0.9, True, learning_rate=lambda: reference.QUADRATIC_LR)
  trajectory = [x.numpy()]
  for t in range(1, 201):
    weights = [3.0, 0.0] if t % 2 else [1.0, 8.0]  # the alternating quadratic as a loss
    opt.minimize(lambda: tf.reduce_sum(tf.constant(weights, tf.float64) * x**2), var_list=[x])
    trajectory.append(x.numpy())
  assert reference.max_relative_error(np.stack(trajectory), expected) < 1e-10


def test_indexed_slices_match_dense_reference():
  """Duplicate indices summed before squaring; untouched rows decay and are not counted."""
  rows, cols, steps = 5, 3, 40
  rng = np.random.default_rng(0)
  table0 = rng.normal(size=(rows, cols))
  batches = [rng.integers(0, rows - 1, size=4) for _ in range(steps)]  # the last row is never used
  weights = [rng.normal(size=(4, cols)) for _ in range(steps)]
  graph = tf.Graph()
  with graph.as_default():
    table = tf.compat.v1.Variable(table0, dtype=tf.float64)
    index = tf.compat.v1.placeholder(tf.int32, [4])
    weight = tf.compat.v1.placeholder(tf.float64, [4, cols])
    loss = tf.reduce_sum(weight * tf.gather(table, index))
    opt = ExpectigradOptimizer(0.1, beta=0.9, epsilon=1e-8, sparse_counter=True)
    ((gradient, _),) = opt.compute_gradients(loss, var_list=[table])
    assert isinstance(gradient, tf.IndexedSlices)
    train_op = opt.apply_gradients([(gradient, table)])
    counter = opt.get_slot(table, 'nonzero_count')
    init = tf.compat.v1.global_variables_initializer()
  expected = reference.ExpectigradReference(table0.ravel(), lr=0.1, beta=0.9, eps=1e-8)
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(init)
    for batch, w in zip(batches, weights):
      session.run(train_op, {index: batch, weight: w})
      dense = np.zeros((rows, cols))
      np.add.at(dense, batch, w)
      expected.step(dense.ravel())
    actual, counts = session.run([table, counter])
  assert reference.max_relative_error(actual.ravel(), expected.x) < 1e-10
  np.testing.assert_array_equal(counts.ravel(), expected.n)
  np.testing.assert_array_equal(actual[-1], table0[-1])  # never touched, never moved


def test_slots_skip_none_gradients_and_one_variable_list_per_optimizer():
  a = tf.Variable([1.0, 2.0])
  b = tf.Variable([3.0])
  opt = ExpectigradOptimizer(0.1)
  opt.apply_gradients([(tf.constant([1.0, -1.0]), a), (None, b)])
  assert opt.get_slot(b, 'momentum') is None
  np.testing.assert_array_equal(b.numpy(), [3.0])
  np.testing.assert_array_equal(opt.get_slot(a, 'nonzero_count').numpy(), [1, 1])
  with pytest.raises(ValueError, match='one optimizer per list of variables'):
    opt.apply_gradients([(tf.constant([1.0]), b)])
  with pytest.raises(ValueError, match='No gradients'):
    opt.apply_gradients([(None, a)])


def test_bridge_runs_a_custom_chain():
  import optax  # pylint: disable=import-outside-toplevel
  x = tf.Variable([1.0, -2.0])
  opt = tf1_bridge.Optimizer(optax.sgd(0.5))
  opt.apply_gradients([(tf.constant([2.0, 2.0]), x)])
  np.testing.assert_allclose(x.numpy(), [0.0, -3.0])


@pytest.mark.parametrize('kwargs,match', [
    (dict(learning_rate=-1e-3), 'learning_rate'),
    (dict(beta=1.0), 'beta'),
    (dict(beta=-0.1), 'beta'),
    (dict(epsilon=0.0), 'epsilon'),
])
def test_bad_hyperparameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    ExpectigradOptimizer(**kwargs)


def test_bad_transform_raises():
  with pytest.raises(TypeError, match='transform'):
    tf1_bridge.Optimizer(0.1)


def test_minimize_after_disable_eager_execution():
  """TF1 programs switch eager off for the whole process: run one in a fresh one."""
  script = textwrap.dedent('''
      import numpy as np, tensorflow as tf
      tf.compat.v1.disable_eager_execution()
      from expectigrad.tensorflow1 import ExpectigradOptimizer
      x = tf.compat.v1.Variable([1.0, -1.0], use_resource=False)
      loss = tf.reduce_sum(x ** 2)
      train_op = ExpectigradOptimizer(0.1, beta=0.0).minimize(loss)
      with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        for _ in range(20):
          session.run(train_op)
        print(*session.run(x))
  ''')
  out = subprocess.run([sys.executable, '-c', script], check=True, capture_output=True, text=True)
  actual = np.array(out.stdout.strip().splitlines()[-1].split(), np.float64)
  expected = reference.run_reference(lambda x, t: 2 * x, np.array([1.0, -1.0]), steps=20,
                                     lr=0.1, beta=0.0, eps=1e-8)[-1]
  np.testing.assert_allclose(actual, expected, rtol=1e-5)  # float32
