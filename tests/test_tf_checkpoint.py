"""``tf.train.Checkpoint`` with the Keras and TF1 optimizers: bit-exact resume, clear errors.

Resuming restores every state variable (deferred until the optimizer creates
it) so training continues exactly as without the interruption. A corrupted
checkpoint fails its checksum; ``verified_restore`` reads the whole file
first, so nothing is assigned.
"""

import os

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
keras = pytest.importorskip('keras')

from expectigrad.bridges import tf_checkpoint  # noqa: E402
from expectigrad.tensorflow1 import ExpectigradOptimizer  # noqa: E402
from expectigrad.tensorflow2 import Expectigrad  # noqa: E402

GRADIENTS = np.random.default_rng(0).normal(size=(12, 3, 2)) * (np.arange(12) % 3 != 0)[:, None, None]


def _keras_run(units=2):
  """A fresh Keras variable and (unbuilt) optimizer, and ``step(t)`` applying gradient t."""
  x = keras.Variable(np.ones((3, units)), dtype='float64')
  opt = Expectigrad(0.125, beta=0.5)
  return {'x': x, 'optimizer': opt}, lambda t: opt.apply_gradients([(tf.constant(GRADIENTS[t]), x)])


def _tf1_run(units=2):
  x = tf.Variable(np.ones((3, units)))
  opt = ExpectigradOptimizer(0.125, beta=0.5)
  return {'x': x, 'optimizer': opt}, lambda t: opt.apply_gradients([(tf.constant(GRADIENTS[t]), x)])


def _values(objects) -> list[np.ndarray]:
  """The variable and every optimizer variable, as numpy (TF1 slots included)."""
  opt, x = objects['optimizer'], objects['x']
  if isinstance(opt, ExpectigradOptimizer):  # its variables() are sorted by (non-unique) names
    state = [opt.get_slot(x, name) for name in sorted(opt.get_slot_names())]
    state += sorted(opt._non_slot_dict.values(), key=lambda v: v.name)  # pylint: disable=protected-access
  else:
    state = opt.variables
  return [x.numpy()] + [np.asarray(v) for v in state]


RUNS = {'keras': _keras_run, 'tf1': _tf1_run}


@pytest.mark.parametrize('run', RUNS)
def test_resume_is_bit_exact(run, tmp_path):
  objects, step = RUNS[run]()
  for t in range(6):
    step(t)
  path = tf.train.Checkpoint(**objects).save(tmp_path / 'ckpt')
  for t in range(6, 12):
    step(t)

  resumed, resumed_step = RUNS[run]()
  status = tf.train.Checkpoint(**resumed).restore(path)
  resumed_step(6)  # creates the optimizer's variables, which take the saved values
  status.assert_consumed()
  for t in range(7, 12):
    resumed_step(t)
  expected, actual = _values(objects), _values(resumed)
  assert len(expected) == len(actual) > 4
  for a, b in zip(expected, actual):
    np.testing.assert_array_equal(a, b)


def _corrupt(path: str) -> None:
  data = next(f for f in os.listdir(os.path.dirname(path)) if '.data-' in f)
  with open(os.path.join(os.path.dirname(path), data), 'r+b') as f:
    f.write(b'\0' * 16)


@pytest.mark.parametrize('run', RUNS)
def test_corrupted_checkpoint_raises_and_changes_nothing(run, tmp_path):
  objects, step = RUNS[run]()
  step(0)
  path = tf.train.Checkpoint(**objects).save(tmp_path / 'ckpt')
  _corrupt(path)
  other, other_step = RUNS[run]()
  for t in range(3):
    other_step(t)
  before = _values(other)
  # Checkpoint.restore alone would assign the TF1 slots read before the
  # corrupted one; verified_restore reads the whole file first.
  with pytest.raises(tf.errors.DataLossError, match='Checksum does not match'):
    tf_checkpoint.verified_restore(tf.train.Checkpoint(**other), path)
  for a, b in zip(before, _values(other)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('run', RUNS)
def test_mismatched_shapes_raise_naming_both_shapes(run, tmp_path):
  objects, step = RUNS[run]()
  step(0)
  path = tf.train.Checkpoint(**objects).save(tmp_path / 'ckpt')
  wider, _ = RUNS[run](units=4)
  with pytest.raises(ValueError, match=r'shape \(3, 2\).*shape \(3, 4\)'):
    tf.train.Checkpoint(**wider).restore(path)
