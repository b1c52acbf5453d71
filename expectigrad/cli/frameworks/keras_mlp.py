"""The demo MLP in Keras 3 (TensorFlow backend), trained by keras.optimizers and
``expectigrad.tensorflow2``."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

# TensorFlow's C++ start-up chatter would bury the progress bar.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import keras  # pylint: disable=wrong-import-position

from expectigrad.cli.frameworks import EPSILON, LEARNING_RATES, MOMENTUM  # pylint: disable=wrong-import-position
# Imported here, not lazily, so a missing bridge is reported before training starts.
from expectigrad.tensorflow2 import Expectigrad  # pylint: disable=wrong-import-position


def _optimizer(name: str) -> keras.optimizers.Optimizer:
  lr = LEARNING_RATES[name]
  if name == 'expectigrad':
    return Expectigrad(learning_rate=lr, beta=MOMENTUM, epsilon=EPSILON)
  if name in ('adam', 'amsgrad'):
    return keras.optimizers.Adam(learning_rate=lr, beta_1=MOMENTUM, beta_2=0.999, epsilon=EPSILON,
                                 amsgrad=name == 'amsgrad')
  return keras.optimizers.SGD(learning_rate=lr, momentum=MOMENTUM)


class KerasTrainer:
  """``model.compile`` + ``train_on_batch``: what a Keras user writes."""

  def __init__(self, init_params: Sequence[np.ndarray], optimizer: str):
    w1, _, w2, _ = init_params
    self._model = keras.Sequential([
        keras.Input((w1.shape[0],)),
        keras.layers.Dense(w1.shape[1], activation='relu'),
        keras.layers.Dense(w2.shape[1]),
    ])
    self._model.set_weights(list(init_params))
    self._model.compile(optimizer=_optimizer(optimizer),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=['accuracy'])

  def step(self, x: np.ndarray, y: np.ndarray) -> None:
    self._model.train_on_batch(x, y)

  def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    loss, accuracy = self._model.evaluate(x, y, batch_size=len(x), verbose=0)
    return float(loss), float(accuracy)


make_trainer = KerasTrainer
