"""Small numeric helpers shared by the transforms (never exported)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

INT32_MAX = jnp.iinfo(jnp.int32).max


# XLA:CPU vectorises a loop along the array's minor dimension. When that is
# shorter than a vector register (the 3x3 of convolution kernels) the loop runs
# scalar: Expectigrad's update over ResNet-18's shapes took 2x as long as over
# the same tensors raveled. Per-element state of such leaves is therefore kept
# raveled (a free reshape), so the loops that write it are 1-D.
_MIN_VECTORISED_MINOR_DIM = 16


def _keeps_parameter_shape(p: Any) -> bool:
  """Whether state for ``p`` must keep ``p``'s shape rather than be raveled."""
  shape = jnp.shape(p)
  if len(shape) < 2 or shape[-1] >= _MIN_VECTORISED_MINOR_DIM:
    return True
  # Sharded parameters keep their layout, so the state is sharded like them.
  if not jax.sharding.get_abstract_mesh().empty:
    return True
  aval_sharding = getattr(jax.typeof(p), 'sharding', None)
  if aval_sharding is not None and not aval_sharding.mesh.empty:
    return True
  if isinstance(p, jax.Array) and not isinstance(p, jax.core.Tracer):
    return len(p.sharding.device_set) > 1
  return False


def zeros_for_state(params: Any, state_dtype: Any = None) -> Any:
  """Zero per-element state buffers for ``params``.

  Each buffer has its parameter's shape, or is raveled to 1-D where XLA:CPU
  would not vectorise loops over that shape (a minor dimension below 16 on
  an unsharded parameter); :func:`reshape_like` converts between the two.

  Args:
    params: a pytree of arrays (``None`` leaves stay ``None``).
    state_dtype: the buffers' dtype; None means the parameter's dtype promoted
      to at least float32, so bfloat16/float16 parameters get float32 state
      (their sums of squares would otherwise stop growing after a few
      thousand steps).

  Returns:
    A pytree of zero arrays.
  """
  def zeros(p):
    dtype = state_dtype or jnp.promote_types(jnp.result_type(p), jnp.float32)
    if _keeps_parameter_shape(p):
      return jnp.zeros_like(p, dtype=dtype)  # keeps p's sharding
    return jnp.zeros((math.prod(jnp.shape(p)),), dtype)

  return jax.tree.map(zeros, params)


def _leaf_name(path: Any) -> str:
  return jax.tree_util.keystr(path) or '(the root of the tree)'


def check_parameters(params: Any) -> None:
  """Checks at ``init`` that every parameter can be optimized (trace time: free).

  Integer and bool parameters cannot take a fractional step (``torch.optim``
  refuses them too); their state would silently be integer as well. Complex
  parameters are let through. ``None`` leaves are skipped.

  Raises:
    TypeError: naming the first non-floating-point leaf's path and dtype.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
          f'parameter {_leaf_name(path)} has dtype {dtype}: only floating-point parameters '
          'can be optimized (exclude integer and bool leaves, e.g. with optax.masked, or '
          'cast them to a float dtype).')


def _fits_state(shape: tuple[int, ...], state_shape: tuple[int, ...]) -> bool:
  """Whether a gradient of ``shape`` fits per-element state of ``state_shape``.

  The state has its parameter's shape, or is that shape raveled (see
  :func:`zeros_for_state`), which only happens to a parameter of two or more
  dimensions with a short minor dimension.
  """
  if shape == state_shape:
    return True
  return (len(state_shape) == 1 and len(shape) >= 2
          and shape[-1] < _MIN_VECTORISED_MINOR_DIM and math.prod(shape) == state_shape[0])


def _pairs(gradients: Any, other: Any) -> list[tuple[Any, Any, Any]]:
  """``(path, gradient, other leaf)`` for the non-None gradient leaves.

  Trees whose structures differ give no pairs: the transform's own tree
  operations report that mismatch as they always did.
  """
  is_none = lambda x: x is None
  leaves, treedef = jax.tree_util.tree_flatten_with_path(gradients, is_leaf=is_none)
  try:
    others = treedef.flatten_up_to(other)
  except (ValueError, TypeError):
    return []
  return [(path, g, o) for (path, g), o in zip(leaves, others)
          if g is not None and o is not None]


def check_gradients(gradients: Any, state: Any = None, params: Any = None) -> None:
  """Checks at ``update`` that each gradient has its parameter's shape (trace time: free).

  Shapes are static, so under ``jit``, ``vmap`` (per-example shapes on both
  sides) or ``scan`` this runs once, while tracing. ``None`` leaves (frozen
  parameters) are skipped on either side.

  Args:
    gradients: the incoming updates.
    state: a per-element state buffer tree made by :func:`zeros_for_state`
      for the parameters, or None.
    params: the parameters, when ``update`` was given them, or None.

  Raises:
    ValueError: naming the first mismatched leaf's path, the gradient's shape
      and the parameter shape expected.
  """
  for path, g, p in _pairs(gradients, params) if params is not None else ():
    if jnp.shape(g) != jnp.shape(p):
      raise ValueError(f'gradient {_leaf_name(path)} has shape {jnp.shape(g)}, but the '
                       f'parameter has shape {jnp.shape(p)}.')
  for path, g, s in _pairs(gradients, state) if state is not None else ():
    shape, state_shape = tuple(jnp.shape(g)), tuple(jnp.shape(s))
    if not _fits_state(shape, state_shape):
      if len(state_shape) == 1:
        expected = (f'a parameter of shape {state_shape} (or of {state_shape[0]} elements '
                    f'with a last dimension below {_MIN_VECTORISED_MINOR_DIM}, whose state is '
                    'kept raveled)')
      else:
        expected = f'a parameter of shape {state_shape}'
      raise ValueError(f'gradient {_leaf_name(path)} has shape {shape}, but the optimizer '
                       f'state was initialized for {expected}.')


def reshape_like(x: jax.Array, like: Any) -> jax.Array:
  """``x`` reshaped to ``like``'s shape: between a parameter's layout and its state's."""
  return x.reshape(jnp.shape(like))


def square_in_state(gradient: jax.Array, state: jax.Array) -> jax.Array:
  """``gradient**2`` in ``state``'s layout and dtype.

  Squared in the state's precision: a bfloat16 ``g**2`` would lose most digits.
  """
  return jnp.square(reshape_like(gradient, state).astype(state.dtype))


def divide_by_rms(updates: jax.Array, mean_square: jax.Array, eps: Any) -> jax.Array:
  """``updates / (eps + sqrt(mean_square))``, shaped like ``updates``.

  ``mean_square`` is in the state's layout. The result is in the wider of the
  two dtypes: bfloat16 gradients with float32 state give float32 updates,
  rounded once, when they are applied.
  """
  scaled = reshape_like(updates, mean_square) / (eps + jnp.sqrt(mean_square))
  return reshape_like(scaled, updates)


def zero_count() -> jax.Array:
  """A fresh step counter: int32, so it is exact for 2^31 - 1 steps."""
  return jnp.zeros([], jnp.int32)


def increment(count: jax.Array) -> jax.Array:
  """Adds one to an int32 counter, saturating at INT32_MAX instead of wrapping."""
  return jnp.where(count < INT32_MAX, count + 1, count)


def increment_where(count: jax.Array, mask: jax.Array) -> jax.Array:
  """Adds one to each int32 counter element where ``mask`` holds, saturating."""
  return count + (mask & (count < INT32_MAX)).astype(count.dtype)


def ema(moment: jax.Array, value: jax.Array, decay: Any) -> jax.Array:
  """``decay * moment + (1 - decay) * value``, kept in ``moment``'s dtype."""
  return (decay * moment + (1 - decay) * value).astype(moment.dtype)


def bias_correction(decay: Any, count: jax.Array) -> jax.Array:
  """``1 - decay ** count``: the mass an EMA started at zero has after ``count`` steps."""
  return 1 - decay**count
