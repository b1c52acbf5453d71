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
