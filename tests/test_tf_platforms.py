"""The TF bridges' converted modules run on every platform; TF1's argument errors."""

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')

from expectigrad.bridges import _tf_chain  # noqa: E402
from expectigrad.tensorflow1 import ExpectigradOptimizer  # noqa: E402
from tests import reference  # noqa: E402

EXPECTED_PLATFORMS = {b'CPU', b'CUDA', b'ROCM', b'TPU'}


def _recorded_platforms(graph_def):
  """The ``platforms`` attribute of every XlaCallModule node, in functions included."""
  nodes = list(graph_def.node)
  for function in graph_def.library.function:
    nodes += list(function.node_def)
  return [set(node.attr['platforms'].list.s) for node in nodes if node.op == 'XlaCallModule']


def test_tf1_graph_records_cpu_and_gpu_lowerings():
  """A TF1 graph built on a CPU-only machine carries the module for CUDA/ROCm/TPU too."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.Variable(np.ones(3, np.float32), use_resource=True)
    ExpectigradOptimizer(0.1).minimize(tf.reduce_sum(x**2))
  recorded = _recorded_platforms(graph.as_graph_def())
  assert len(recorded) >= 2  # init and update
  assert all(platforms == EXPECTED_PLATFORMS for platforms in recorded), recorded


def test_keras_optimizer_modules_record_every_platform():
  keras = pytest.importorskip('keras')
  if keras.backend.backend() != 'tensorflow':
    pytest.skip('the TF modules exist on the TensorFlow backend')
  from expectigrad.tensorflow2 import Expectigrad  # pylint: disable=import-outside-toplevel
  x = keras.Variable(np.ones((2, 3), np.float32))
  opt = Expectigrad(0.1)
  opt.build([x])
  chain = opt._chain.converted  # pylint: disable=protected-access
  assert set(p.upper().encode() for p in chain.platforms) == EXPECTED_PLATFORMS
  step = tf.function(lambda g: opt.apply_gradients([(g, x)]))
  graph_def = step.get_concrete_function(tf.TensorSpec((2, 3), tf.float32)).graph.as_graph_def()
  recorded = _recorded_platforms(graph_def)
  assert recorded and all(platforms == EXPECTED_PLATFORMS for platforms in recorded), recorded


def test_converted_chain_still_runs_on_cpu_with_every_platform_recorded():
  chain = _tf_chain.ConvertedChain(lambda learning_rate: __import__('expectigrad').expectigrad(
      learning_rate, beta=0.0, sparse_counter=False), ['w'], [(2,)], [tf.float64])
  params = [tf.constant([1.0, -2.0], tf.float64)]
  state = chain.init(params)
  expected = reference.ExpectigradReference([1.0, -2.0], lr=0.5, beta=0.0, sparse_counter=False)
  for g in ([3.0, 0.5], [-1.0, 0.0], [0.25, 2.0]):
    (new,), state = chain.update(params, [tf.constant(g, tf.float64)], state, 0.5)
    params = [new]
    expected.step(g)
  assert reference.max_relative_error(params[0].numpy(), expected.x) < 1e-10


@pytest.mark.parametrize('dtype', [tf.int32, tf.complex64])
def test_tf1_rejects_integer_and_complex_variables_before_any_slot(dtype):
  x = tf.Variable(tf.ones(3, dtype), name=f'v_{dtype.name}')
  opt = ExpectigradOptimizer(0.1)
  with pytest.raises(TypeError, match=f"'v_{dtype.name}'.*{dtype.name}"):
    opt.apply_gradients([(tf.ones(3, dtype), x)])
  assert opt.variables() == []
  np.testing.assert_array_equal(x.numpy(), np.ones(3))


def test_tf1_rejects_a_wrong_shape_gradient_before_anything_changes():
  x = tf.Variable(tf.ones(3, tf.float32), name='w')
  opt = ExpectigradOptimizer(0.1)
  with pytest.raises(ValueError, match=r"'w'.*\(3, 1\).*\(3,\)"):
    opt.apply_gradients([(tf.ones((3, 1)), x)])
  assert opt.variables() == []
  np.testing.assert_array_equal(x.numpy(), np.ones(3))
