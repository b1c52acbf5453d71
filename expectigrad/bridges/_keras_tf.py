"""The Keras bridge on ``KERAS_BACKEND=tensorflow``: the chain as one jax2tf-converted op.

See :mod:`expectigrad.bridges._tf_chain`: the chain's ``init`` and ``update``
are ``XlaCallModule`` ops lowered for every platform (CPU and GPU); a step is
a ``tf.function(jit_compile=True)`` that reads the variables, runs the update
and writes the results through the optimizer's ``assign``, inlined into
``model.fit``'s XLA cluster where Keras compiles.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from expectigrad.bridges import _conventions, _tf_chain


def _tensor_variable(variable: Any) -> Any:
  """The ``tf.Variable`` behind a Keras variable (a ``tf.Variable`` as it is)."""
  return variable.value if isinstance(variable, keras.Variable) else variable


def initialising():
  """Creates the state variables eagerly even when a ``tf.function`` builds the optimizer.

  XLA cannot lift variables initialised from values computed in the function.
  """
  return tf.init_scope()


def gradient_shape(gradient: Any) -> tuple | None:
  return _tf_chain.gradient_shape(gradient)


def device_of(variable: Any) -> str:
  """The device of the (per-device copy of the) variable Keras updates."""
  return _tensor_variable(variable).device


def local(variable: Any, device: str) -> Any:
  """The copy of ``variable`` on ``device`` (under ``tf.distribute``; else the variable)."""
  value = _tensor_variable(variable)
  copies = tf.distribute.get_strategy().experimental_local_results(value)
  return next((copy for copy in copies if copy.device == device), copies[0])


def dense_gradient(gradient: Any, variable: Any) -> tf.Tensor:
  return _tf_chain.dense_gradient(gradient, variable)


def zeros_like(variable: Any) -> tf.Tensor:
  return tf.zeros(variable.shape, variable.dtype)


class Chain:
  """The chain converted for the Keras variables' names, shapes and dtypes."""

  def __init__(self, transform: _conventions.TransformOrFactory, names: Sequence[str],
               shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str]):
    self._converted = _tf_chain.ConvertedChain(transform, names, shapes,
                                               [tf.as_dtype(d) for d in dtypes])
    self.leaves = self._converted.chain.state_leaves()  # numpy dtype names, as Keras takes them
    self.platforms = self._converted.platforms
    self._step: Callable | None = None

  @property
  def converted(self) -> _tf_chain.ConvertedChain:
    return self._converted

  def init(self, variables: Sequence[Any]) -> list[tf.Tensor]:
    return self._converted.init([tf.convert_to_tensor(_tensor_variable(v)) for v in variables])

  def step(self, params, state, gradients, learning_rate, frozen, assign, in_place) -> None:
    """One step on one device's variables, written through ``assign``."""
    del in_place  # every write goes through assign on this backend
    if self._step is None:  # one optimizer per chain: its assign is traced into the step
      self._step = self._converted.assigning_step(assign)
    self._step(list(params), list(state), list(gradients),
               self._converted.learning_rate_tensor(learning_rate), frozen)
