"""Momentum placements: "outer" (Expectigrad) and "inner" (Adam, ablation).

Both keep a bias-corrected EMA ``m_t / (1 - beta**t)``; they differ in what is
averaged. Outer momentum averages updates that were already divided by the
RMS denominator, so every past step keeps the scale it was taken at. Inner
momentum averages raw gradients and divides the average by the current
denominator, so a change in the denominator rescales all the remembered
steps at once.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from expectigrad import _validation
from expectigrad.transforms import _numerics
from expectigrad.transforms.preconditioner import Preconditioner


class MomentumState(NamedTuple):
  """State of :func:`outer_momentum`.

  Attributes:
    count: int32 number of steps taken (saturates at 2**31 - 1).
    momentum: the EMA of the incoming updates, or None when ``beta == 0``.
  """

  count: jax.Array
  momentum: Optional[optax.Updates]


class InnerMomentumState(NamedTuple):
  """State of :func:`inner_momentum`.

  Attributes:
    momentum: :class:`MomentumState` of the EMA of raw gradients.
    preconditioner: the state of the wrapped preconditioner.
  """

  momentum: MomentumState
  preconditioner: Any


def _keeps_buffer(beta: Any) -> bool:
  """Whether ``init`` keeps a momentum buffer: unless ``beta`` is a known zero.

  A concrete zero drops it however it arrives: a Python number, or the 0-d
  array ``optax.inject_hyperparams`` passes, so both give one state structure
  (``update`` follows the state it is given). A traced ``beta`` (the bridges,
  ``jax.jit(opt.init)`` under ``inject_hyperparams``) has no value yet and
  keeps the buffer.
  """
  if isinstance(beta, jax.core.Tracer) or jnp.ndim(beta) != 0:
    return True
  return float(beta) != 0


def _init_momentum(params, beta, state_dtype) -> MomentumState:
  _numerics.check_parameters(params)
  return MomentumState(
      count=_numerics.zero_count(),
      momentum=_numerics.zeros_for_state(params, state_dtype) if _keeps_buffer(beta) else None,
  )


def _update_momentum(updates, state: MomentumState, beta, bias_correction: bool):
  """Advances the EMA and returns ``(bias-corrected EMA, new state)``."""
  _numerics.check_gradients(updates, state=state.momentum)
  count = _numerics.increment(state.count)
  if state.momentum is None:  # beta == 0: the EMA is the update itself.
    return updates, MomentumState(count, None)
  momentum = jax.tree.map(
      lambda m, u: _numerics.ema(m, u, beta), state.momentum, updates
  )
  correction = _numerics.bias_correction(beta, count) if bias_correction else 1.0
  # In the buffer's dtype: rounding to low-precision updates here would throw
  # away the precision the float32 buffer keeps.
  corrected = jax.tree.map(lambda m: m / jnp.asarray(correction, m.dtype), momentum)
  return corrected, MomentumState(count, momentum)


def outer_momentum(
    beta: float = 0.9, bias_correction: bool = True, state_dtype: Any = None
) -> optax.GradientTransformation:
  """Bias-corrected EMA of the (already RMS-scaled) updates, Expectigrad's momentum.

  Returns ``m_t / (1 - beta**t)`` with ``m_t = beta * m_{t-1} + (1 - beta) * u_t``.
  With ``beta == 0`` at ``init`` (a Python number, or the array that
  ``optax.inject_hyperparams`` passes) no buffer is kept and updates pass
  through unchanged, whatever ``beta`` is injected later.

  Args:
    beta: EMA decay, in [0, 1).
    bias_correction: divide by ``1 - beta**t`` (the paper's choice).
    state_dtype: dtype of the momentum buffer; None means the parameter's
      dtype, promoted to at least float32.

  Returns:
    An ``optax.GradientTransformation`` with :class:`MomentumState`.

  Raises:
    ValueError: if ``beta`` is outside [0, 1).
  """
  _validation.check_unit_interval('beta', beta)

  def init_fn(params):
    return _init_momentum(params, beta, state_dtype)

  def update_fn(updates, state, params=None):
    _numerics.check_gradients(updates, params=params)
    return _update_momentum(updates, state, beta, bias_correction)

  return optax.GradientTransformation(init_fn, update_fn)


def inner_momentum(
    preconditioner: Preconditioner,
    beta: float = 0.9,
    bias_correction: bool = True,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
  """Ablation: momentum on raw gradients, then division by ``preconditioner``.

  This is Adam's placement. It replaces the pair ``scale_by_preconditioner(p),
  outer_momentum(beta)`` of a chain, so the four variants of the paper's
  ablation differ by one piece each::

    chain(scale_by_arithmetic_rms(eps), outer_momentum(b1), scale_by_lr(lr))  # Expectigrad
    chain(inner_momentum(arithmetic_rms(eps), b1), scale_by_lr(lr))           # inner momentum
    chain(scale_by_ema_rms(b2, eps), outer_momentum(b1), scale_by_lr(lr))     # EMA denominator
    chain(inner_momentum(ema_rms(b2, eps), b1), scale_by_lr(lr))              # Adam

  The last one is ``optax.adam(lr, b1, b2, eps)``.

  Args:
    preconditioner: the denominator, e.g. :func:`~expectigrad.transforms.ema_rms`.
    beta: EMA decay of the raw gradients, in [0, 1).
    bias_correction: divide the EMA by ``1 - beta**t``.
    state_dtype: dtype of the momentum buffer; None means the parameter's
      dtype, promoted to at least float32.

  Returns:
    An ``optax.GradientTransformation`` with :class:`InnerMomentumState`.

  Raises:
    ValueError: if ``beta`` is outside [0, 1).
  """
  _validation.check_unit_interval('beta', beta)

  def init_fn(params):
    return InnerMomentumState(
        _init_momentum(params, beta, state_dtype), preconditioner.init(params)
    )

  def update_fn(updates, state, params=None):
    _numerics.check_gradients(updates, params=params)
    statistics = preconditioner.accumulate(updates, state.preconditioner)
    averaged, momentum = _update_momentum(updates, state.momentum, beta, bias_correction)
    return preconditioner.scale(averaged, statistics), InnerMomentumState(momentum, statistics)

  return optax.GradientTransformation(init_fn, update_fn)
