"""Small numeric helpers shared by the transforms (never exported)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

INT32_MAX = jnp.iinfo(jnp.int32).max


def zeros_for_state(params: Any, state_dtype: Any = None, real: bool = False) -> Any:
  """Zero per-element state buffers for ``params``, each shaped (and sharded) like its parameter.

  Args:
    params: a pytree of arrays (``None`` leaves stay ``None``).
    state_dtype: the buffers' dtype; None means the parameter's dtype promoted
      to at least float32, so bfloat16/float16 parameters get float32 state
      (their sums of squares would otherwise stop growing after a few
      thousand steps). For a complex parameter a real floating ``state_dtype``
      gives the complex type of that precision; an integer one (counters) is kept.
    real: the buffers hold real numbers even for complex parameters (sums of
      ``|g|**2``), in the real type of the same precision.

  Returns:
    A pytree of zero arrays.
  """
  def zeros(p):
    dtype = jnp.result_type(p)
    if state_dtype is None:
      dtype = jnp.promote_types(dtype, jnp.float32)
    elif jnp.issubdtype(dtype, jnp.complexfloating) and jnp.issubdtype(state_dtype, jnp.floating):
      dtype = jnp.promote_types(state_dtype, jnp.complex64)
    else:
      dtype = state_dtype
    if real:
      dtype = jnp.finfo(dtype).dtype
    return jnp.zeros_like(p, dtype=dtype)

  return jax.tree.map(zeros, params)


def _leaf_name(path: Any) -> str:
  return jax.tree_util.keystr(path) or '(the root of the tree)'


def check_parameters(params: Any) -> None:
  """Checks at ``init`` that every parameter can be optimized (trace time: free).

  Integer and bool parameters cannot take a fractional step (``torch.optim``
  refuses them too); their state would silently be integer as well. Complex
  parameters are optimized as ``optax.adam`` does (squares are ``|g|**2``).
  ``None`` leaves are skipped.

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


def _pairs(gradients: Any, other: Any) -> list[tuple[Any, Any, Any]]:
  """``(path, gradient, other leaf)`` for the non-None gradient leaves.

  Trees whose structures differ give no pairs: the transform's own tree
  operations report that mismatch in their own words.
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
    if jnp.shape(g) != jnp.shape(s):
      raise ValueError(f'gradient {_leaf_name(path)} has shape {jnp.shape(g)}, but the '
                       f'optimizer state was initialized for a parameter of shape {jnp.shape(s)}.')


def square_in_state(gradient: jax.Array, state: jax.Array) -> jax.Array:
  """``|gradient|**2`` in ``state``'s (real) dtype.

  Squared in the state's precision: a bfloat16 ``g**2`` would lose most
  digits. A complex gradient gives ``re**2 + im**2``, as ``optax.adam``'s
  second moment: ``g**2`` would be complex, and negative for an imaginary ``g``.
  """
  if jnp.issubdtype(gradient.dtype, jnp.complexfloating):
    return (jnp.square(gradient.real.astype(state.dtype))
            + jnp.square(gradient.imag.astype(state.dtype)))
  return jnp.square(gradient.astype(state.dtype))


def divide_by_rms(updates: jax.Array, mean_square: jax.Array, eps: Any) -> jax.Array:
  """``updates / (eps + sqrt(mean_square))``.

  The result is in the wider of the two dtypes: bfloat16 gradients with
  float32 state give float32 updates, which :func:`expectigrad.expectigrad`
  rounds once, to the gradients' dtype, at the end of its chain.
  """
  return updates / (eps + jnp.sqrt(mean_square))


def kahan_add(total: jax.Array, compensation: jax.Array, term: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
  """``total + term`` with Kahan's compensation: returns ``(new total, new compensation)``.

  ``compensation`` holds minus the low-order part that the last additions
  rounded away; it is folded into the next term. The order of operations is
  the algorithm: XLA and torch keep floating-point expressions as written
  (no reassociation without fast-math), so ``(new - total) - term`` is not
  simplified to 0.
  """
  corrected = term - compensation
  new_total = total + corrected
  return new_total, (new_total - total) - corrected


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
  """``1 - decay ** count``: the mass an EMA started at zero has after ``count`` steps.

  ``lax.pow`` with the integer count as an operand: ``decay ** count`` with a
  concrete count (an update outside ``jit``) becomes ``integer_pow`` with the
  count as a compile-time constant, so every step compiled a new computation.
  Under ``jit`` both give the same ``pow`` of a float and an int32.
  """
  return 1 - jax.lax.pow(jnp.asarray(decay, jnp.result_type(float)), count)
