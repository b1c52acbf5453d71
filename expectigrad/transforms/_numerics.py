"""Small numeric helpers shared by the transforms (never exported)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

INT32_MAX = jnp.iinfo(jnp.int32).max


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
