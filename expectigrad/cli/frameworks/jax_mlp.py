"""The demo MLP in JAX, trained by optax optimizers and expectigrad's."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import expectigrad
from expectigrad.cli.frameworks import EPSILON, LEARNING_RATES, MOMENTUM


def _optimizer(name: str) -> optax.GradientTransformation:
  lr = LEARNING_RATES[name]
  if name == 'expectigrad':
    return expectigrad.expectigrad(lr, beta=MOMENTUM, eps=EPSILON)
  if name == 'adam':
    return optax.adam(lr, b1=MOMENTUM, eps=EPSILON)
  if name == 'amsgrad':
    return optax.amsgrad(lr, b1=MOMENTUM, eps=EPSILON)
  return optax.sgd(lr, momentum=MOMENTUM)


def _loss_and_accuracy(params, x, y):
  w1, b1, w2, b2 = params
  logits = jax.nn.relu(x @ w1 + b1) @ w2 + b2
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, (jnp.argmax(logits, axis=-1) == y).mean()


class JaxTrainer:
  """A jitted train step whose parameters and state stay on the device."""

  def __init__(self, init_params: Sequence[np.ndarray], optimizer: str):
    opt = _optimizer(optimizer)
    self._params = tuple(jnp.asarray(p) for p in init_params)
    self._state = opt.init(self._params)

    def step(params, state, x, y):
      grads, _ = jax.grad(_loss_and_accuracy, has_aux=True)(params, x, y)
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    self._step = jax.jit(step, donate_argnums=(0, 1))
    self._evaluate = jax.jit(_loss_and_accuracy)

  def step(self, x: np.ndarray, y: np.ndarray) -> None:
    self._params, self._state = self._step(self._params, self._state, x, y)

  def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    loss, accuracy = self._evaluate(self._params, x, y)
    return float(loss), float(accuracy)


make_trainer = JaxTrainer
