"""The demo MLP in Keras 3 (TensorFlow backend), trained by keras.optimizers and
``expectigrad.tensorflow2``."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

# TensorFlow's C++ start-up chatter would bury the progress bar.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import keras  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

if keras.backend.backend() != 'tensorflow':
  # Caught by frameworks.load() and reported as "the keras demo is unavailable: ...".
  raise ImportError(f'it needs KERAS_BACKEND=tensorflow, not {keras.backend.backend()!r}')

from expectigrad.cli.frameworks import EPSILON, LEARNING_RATES, MOMENTUM  # pylint: disable=wrong-import-position
# Imported here, not lazily, so a missing bridge is reported before training starts.
from expectigrad.tensorflow2 import Expectigrad  # pylint: disable=wrong-import-position

# Single-threaded for the same reason as the torch demo: the matrices are tiny and
# threads contend on a busy machine. Only possible before TensorFlow's first op.
try:
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:  # TensorFlow already ran something in this process
  pass


def _optimizer(name: str) -> keras.optimizers.Optimizer:
  lr = LEARNING_RATES[name]
  if name == 'expectigrad':
    return Expectigrad(learning_rate=lr, beta=MOMENTUM, epsilon=EPSILON)
  if name in ('adam', 'amsgrad'):
    return keras.optimizers.Adam(learning_rate=lr, beta_1=MOMENTUM, beta_2=0.999, epsilon=EPSILON,
                                 amsgrad=name == 'amsgrad')
  return keras.optimizers.SGD(learning_rate=lr, momentum=MOMENTUM)


class KerasTrainer:
  """Keras' custom-training-loop pattern: a ``tf.function`` around GradientTape and
  ``apply_gradients`` (measured 2x faster per step than ``train_on_batch`` here)."""

  def __init__(self, init_params: Sequence[np.ndarray], optimizer: str):
    w1, _, w2, _ = init_params
    self._model = keras.Sequential([
        keras.Input((w1.shape[0],)),
        keras.layers.Dense(w1.shape[1], activation='relu'),
        keras.layers.Dense(w2.shape[1]),
    ])
    self._model.set_weights(list(init_params))
    self._optimizer = _optimizer(optimizer)
    self._loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    self._step = tf.function(self._train_step)

  def _train_step(self, x: tf.Tensor, y: tf.Tensor) -> None:
    with tf.GradientTape() as tape:
      loss = self._loss(y, self._model(x, training=True))
    variables = self._model.trainable_variables
    self._optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

  def step(self, x: np.ndarray, y: np.ndarray) -> None:
    self._step(x, y)

  def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    logits = self._model(x)
    accuracy = np.mean(np.argmax(logits, axis=-1) == y)
    return float(self._loss(y, logits)), float(accuracy)


make_trainer = KerasTrainer
