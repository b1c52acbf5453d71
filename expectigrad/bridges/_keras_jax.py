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
import optax

from expectigrad.bridges import _conventions


def initialising():
  return contextlib.nullcontext()


def _value(variable: Any) -> jax.Array:
  return variable.value if isinstance(variable, keras.Variable) else jnp.asarray(variable)


def gradient_shape(gradient: Any) -> tuple | None:
  return tuple(int(d) for d in gradient.shape)


def device_of(variable: Any) -> str:
  del variable
  return ''


def local(variable: Any, device: str) -> Any:
  del device
  return variable


def dense_gradient(gradient: Any, variable: Any) -> jax.Array:
  """The dense gradient: a ``jax.experimental.sparse`` array is densified (duplicates summed)."""
  del variable
  todense = getattr(gradient, 'todense', None)
  return todense() if callable(todense) else jnp.asarray(gradient)


def zeros_like(variable: Any) -> jax.Array:
  return jnp.zeros(tuple(variable.shape), variable.dtype)


class Chain:
  """The optax chain over the Keras variables, keyed by their names."""

  def __init__(self, transform: _conventions.TransformOrFactory, names: Sequence[str],
               shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str]):
    self._transform = transform
    self._keys = _conventions.unique_keys(list(names))
    self._dtypes = list(dtypes)
    self._hyper_dtype = _conventions.hyper_dtype(dtypes)
    specs = [jax.ShapeDtypeStruct(tuple(s), jnp.dtype(d)) for s, d in zip(shapes, dtypes)]
    with _conventions.x64_scope(self._dtypes):
      state = jax.eval_shape(lambda p: self._make(1.0).init(dict(zip(self._keys, p))), specs)
    self._treedef = jax.tree.structure(state)
    self.leaves = _conventions.named_leaves(state, self._keys)
    self._init: Callable = jax.jit(self._jax_init)
    self._update: Callable = jax.jit(self._jax_update)

  def _make(self, learning_rate: Any) -> optax.GradientTransformation:
    return _conventions.make_transform(self._transform, {'learning_rate': learning_rate})

  def _jax_init(self, params):
    return jax.tree.leaves(self._make(1.0).init(dict(zip(self._keys, params))))

  def _jax_update(self, params, gradients, state, learning_rate):
    params = dict(zip(self._keys, params))
    gradients = dict(zip(self._keys, gradients))
    state = jax.tree.unflatten(self._treedef, state)
    updates, state = self._make(learning_rate).update(gradients, state, params)
    new_params = optax.apply_updates(params, updates)
    return [new_params[key] for key in self._keys], jax.tree.leaves(state)

  def init(self, variables: Sequence[Any]) -> list[jax.Array]:
    with _conventions.x64_scope(self._dtypes):
      return self._init([_value(v) for v in variables])

  def step(self, params, state, gradients, learning_rate, frozen, assign) -> None:
    """One step: reads the values, runs the chain, writes through ``assign``."""
    with _conventions.x64_scope(self._dtypes):
      learning_rate = jnp.asarray(learning_rate).astype(self._hyper_dtype)
      new_params, new_state = self._update(
          [_value(v) for v in params], [jnp.asarray(g) for g in gradients],
          [_value(v) for v in state], learning_rate)
    for i, (variable, value) in enumerate(zip(params, new_params)):
      if i not in frozen:
        assign(variable, value)
    for leaf, variable, value in zip(self.leaves, state, new_state):
      if leaf.owner not in frozen:
        assign(variable, value)
