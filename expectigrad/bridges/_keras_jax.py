"""The Keras bridge on ``KERAS_BACKEND=jax``: the optax chain itself, in Keras's step.

Keras's JAX trainer runs the optimizer inside its jitted train step
(``stateless_apply``): the chain's update is a ``jax.jit`` function that is
inlined there, reading the variables' current values and returning the new
ones, which the bridge writes through the optimizer's ``assign``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import keras

from expectigrad.bridges import _conventions
from expectigrad.bridges._keras_one_device import device_of, gradient_shape, local  # noqa: F401


def initialising():
  return contextlib.nullcontext()


def _value(variable: Any) -> jax.Array:
  return variable.value if isinstance(variable, keras.Variable) else jnp.asarray(variable)


def dense_gradient(gradient: Any, variable: Any) -> jax.Array:
  """The dense gradient: a ``jax.experimental.sparse`` array is densified (duplicates summed)."""
  del variable
  todense = getattr(gradient, 'todense', None)
  return todense() if callable(todense) else jnp.asarray(gradient)


def zeros_like(variable: Any) -> jax.Array:
  return jnp.zeros(tuple(variable.shape), variable.dtype)


class Chain:
  """The chain core over the Keras variables, keyed by their names, jitted."""

  def __init__(self, transform: _conventions.TransformOrFactory, names: Sequence[str],
               shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str]):
    specs = [jax.ShapeDtypeStruct(tuple(s), jnp.dtype(d)) for s, d in zip(shapes, dtypes)]
    self._chain = _conventions.Chain(transform, names, specs)
    self.leaves = self._chain.state_leaves()
    self._init: Callable = jax.jit(self._chain.init)
    self._update: Callable = jax.jit(self._chain.update)

  def init(self, variables: Sequence[Any]) -> list[jax.Array]:
    """The chain's initial state for the variables' current values; sets :attr:`leaves`' shapes.

    A chain's state layout may depend on where the parameters live:
    :func:`expectigrad.layout.ravel_short_minor_dims` keeps the state of a
    parameter on several devices (any Keras distribution) in its shape, so
    that it can be sharded like it, and ravels it on one device. The shapes
    traced from shapes alone in the constructor are those of one device, so
    the leaves take the shapes of the state initialised from the values, as
    every jitted step will see them.
    """
    with self._chain.x64():
      initial = self._init([_value(v) for v in variables])
    self.leaves = [leaf._replace(shape=tuple(value.shape))
                   for leaf, value in zip(self.leaves, initial)]
    return initial

  def step(self, params, state, gradients, learning_rate, frozen, assign, in_place) -> None:
    """One step: reads the values, runs the chain, writes through ``assign``."""
    del in_place  # every write goes through assign on this backend
    with self._chain.x64():
      learning_rate = jnp.asarray(learning_rate).astype(self._chain.hyper_dtype)
      new_params, new_state = self._update(
          [_value(v) for v in params], [jnp.asarray(g) for g in gradients],
          [_value(v) for v in state], learning_rate)
    _conventions.assign_unfrozen(assign, self.leaves, params, new_params, state, new_state, frozen)
