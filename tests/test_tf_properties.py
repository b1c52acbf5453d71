"""Property tests: the TF1 and Keras optimizers match the numpy reference on random cases.

See :mod:`tests.properties` for the cases (0-d and empty shapes, float32 and
float64, sparse gradients) and the profiles (``EXPECTIGRAD_PROFILE=full``).
Each case builds a fresh optimizer, so each pays one conversion and one XLA
compilation of the step (~0.3 s); the steps themselves run eagerly.
"""

import numpy as np
import pytest
from hypothesis import given

tf = pytest.importorskip('tensorflow')
keras = pytest.importorskip('keras')

from expectigrad.tensorflow1 import ExpectigradOptimizer  # noqa: E402
from expectigrad.tensorflow2 import Expectigrad  # noqa: E402
from tests import properties  # noqa: E402


def _hyperparameters(case: properties.Case) -> dict:
  return dict(learning_rate=case.lr, beta=case.beta, epsilon=case.eps,
              sparse_counter=case.sparse_counter)


def run_tf1(case: properties.Case) -> np.ndarray:
  x = tf.Variable(case.initial_params())
  opt = ExpectigradOptimizer(**_hyperparameters(case))
  for g in case.gradients():
    opt.apply_gradients([(tf.constant(g), x)])
  return x.numpy()


def run_keras(case: properties.Case) -> np.ndarray:
  x = keras.Variable(case.initial_params(), dtype=case.dtype)
  opt = Expectigrad(**_hyperparameters(case))
  for g in case.gradients():
    opt.apply_gradients([(tf.constant(g), x)])
  return x.numpy()


@given(properties.cases)
def test_tf1_matches_reference(case):
  properties.check_against_reference(case, run_tf1(case))


@given(properties.cases)
def test_keras_matches_reference(case):
  properties.check_against_reference(case, run_keras(case))
