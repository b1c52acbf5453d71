"""bfloat16/float16 TF1 and Keras variables: float32 optimizer state, exact past 2**11 steps.

Mirrors test_torch_low_precision.py: the chain keeps float32 sums and
momentum and int32 counters for 16-bit variables and returns updates rounded
once to the gradients' dtype, which ``optax.apply_updates`` inside the
converted step adds to the variable.
"""

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
keras = pytest.importorskip('keras')

from expectigrad.tensorflow1 import ExpectigradOptimizer  # noqa: E402
from expectigrad.tensorflow2 import Expectigrad  # noqa: E402
from tests import reference  # noqa: E402

STEPS = 3000
# Both exactly representable in 8 bits; the first is zero on every third step.
GRADS = np.stack([np.where(np.arange(STEPS) % 3 == 0, 0.0, 0.25), np.full(STEPS, -0.5)], axis=1)


def _run_tf1(dtype):
  x = tf.Variable(np.zeros(2), dtype=dtype)
  opt = ExpectigradOptimizer(1e-3, beta=0.9, epsilon=1e-8)
  gradient = tf.Variable(np.zeros(2), dtype=dtype)

  @tf.function  # one graph for all the steps (3000 eager calls are much slower)
  def step():
    opt.apply_gradients([(gradient.read_value(), x)])

  for g in GRADS:
    gradient.assign(g.astype(dtype.as_numpy_dtype))
    step()
  names = {'sum_of_squares', 'momentum', 'nonzero_count'}
  counts = list(opt._non_slot_dict.values())  # pylint: disable=protected-access
  return x, {name: opt.get_slot(x, name) for name in names}, counts


def _run_keras(dtype):
  x = keras.Variable(np.zeros(2), dtype=dtype.name)
  opt = Expectigrad(1e-3, beta=0.9, epsilon=1e-8)
  step = tf.function(lambda g: opt.apply_gradients([(g, x)]), jit_compile=True)
  for g in GRADS:
    step(tf.constant(g, dtype))
  slots = {name: next(v for v in opt.variables if v.path.endswith(f'_{name}'))
           for name in ('sum_of_squares', 'momentum', 'nonzero_count')}
  counts = [v for v in opt.variables if v.path.endswith('_count') and not v.path.endswith('nonzero_count')]
  return x, slots, counts


@pytest.mark.parametrize('run', [_run_tf1, _run_keras], ids=['tf1', 'keras'])
@pytest.mark.parametrize('dtype', [tf.bfloat16, tf.float16], ids=['bfloat16', 'float16'])
def test_state_is_float32_and_follows_the_reference_past_2048_steps(run, dtype):
  x, slots, counts = run(dtype)
  ref = reference.ExpectigradReference(np.zeros(2), lr=1e-3, beta=0.9, eps=1e-8)
  for g in GRADS:
    ref.step(g)
  assert tf.as_dtype(x.dtype) == dtype
  assert tf.as_dtype(slots['sum_of_squares'].dtype) == tf.float32
  assert tf.as_dtype(slots['momentum'].dtype) == tf.float32
  assert tf.as_dtype(slots['nonzero_count'].dtype) == tf.int32
  np.testing.assert_array_equal(np.asarray(slots['nonzero_count']), [2000, 3000])
  assert len(counts) == 2 and all(int(np.asarray(count)) == STEPS for count in counts)
  # float16 would have stopped the sums at 2048 steps' worth; float32 is exact here.
  np.testing.assert_array_equal(np.asarray(slots['sum_of_squares']), ref.s)
  np.testing.assert_allclose(np.asarray(slots['momentum']), ref.m, rtol=1e-5)
