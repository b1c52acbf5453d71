"""Small numeric helpers shared by the transforms (never exported)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

INT32_MAX = jnp.iinfo(jnp.int32).max


def zeros_for_state(params: Any, state_dtype: Any = None) -> Any:
  """Zero state buffers shaped like ``params``.

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
    return jnp.zeros_like(p, dtype=dtype)

  return jax.tree.map(zeros, params)


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
