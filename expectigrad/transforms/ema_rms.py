"""Ablation piece: the exponential-moving-average denominator of RMSProp/Adam."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from expectigrad import _validation
from expectigrad.transforms import _numerics
from expectigrad.transforms.preconditioner import Preconditioner, scale_by_preconditioner


class EmaRmsState(NamedTuple):
  """State of :func:`ema_rms`.

  Attributes:
    count: int32 number of steps taken (saturates at 2**31 - 1).
    mean_of_squares: EMA of squared gradients (started at zero).
  """

  count: jax.Array
  mean_of_squares: optax.Updates


def ema_rms(
    decay: float = 0.999,
    eps: float = 1e-8,
    bias_correction: bool = True,
    state_dtype: Any = None,
) -> Preconditioner:
  """The preconditioner ``eps + sqrt(v)``, ``v`` an EMA of squared gradients.

  This is the denominator of RMSProp (``bias_correction=False``) and Adam
  (``bias_correction=True``, where ``v`` is divided by ``1 - decay**t``). It is
  the piece Expectigrad replaces with :func:`~expectigrad.transforms.arithmetic_rms`.

  Args:
    decay: EMA decay of the squared gradients, in [0, 1).
    eps: added to the root mean square; must be > 0.
    bias_correction: divide the EMA by ``1 - decay**t``.
    state_dtype: dtype of the EMA; None means the parameter's dtype, promoted
      to at least float32.

  Returns:
    A :class:`Preconditioner` with :class:`EmaRmsState`.

  Raises:
    ValueError: if ``decay`` is outside [0, 1) or ``eps <= 0``.
  """
  _validation.check_unit_interval('decay', decay)
  _validation.check_positive('eps', eps)

  def init(params):
    _numerics.check_parameters(params)
    return EmaRmsState(
        count=_numerics.zero_count(),
        mean_of_squares=_numerics.zeros_for_state(params, state_dtype, real=True),
    )

  def accumulate(gradients, state):
    _numerics.check_gradients(gradients, state=state.mean_of_squares)
    return EmaRmsState(
        count=_numerics.increment(state.count),
        mean_of_squares=jax.tree.map(
            lambda v, g: _numerics.ema(v, _numerics.square_in_state(g, v), decay),
            state.mean_of_squares,
            gradients,
        ),
    )

  def scale(tree, state):
    correction = _numerics.bias_correction(decay, state.count) if bias_correction else 1.0

    return jax.tree.map(
        lambda u, v: _numerics.divide_by_rms(u, v / jnp.asarray(correction, v.dtype), eps),
        tree,
        state.mean_of_squares,
    )

  return Preconditioner(init, accumulate, scale)


def scale_by_ema_rms(
    decay: float = 0.999, eps: float = 1e-8, bias_correction: bool = True
) -> optax.GradientTransformation:
  """Scales updates by ``1 / (eps + sqrt(EMA of g**2))`` (RMSProp/Adam style).

  Ablation: swapping this for :func:`~expectigrad.transforms.scale_by_arithmetic_rms`
  in the Expectigrad chain gives "Expectigrad with an EMA denominator"::

    optax.chain(scale_by_ema_rms(0.999, eps), outer_momentum(0.9), scale_by_lr(lr))

  Args:
    decay: EMA decay of the squared gradients, in [0, 1).
    eps: added to the root mean square; must be > 0.
    bias_correction: divide the EMA by ``1 - decay**t``.

  Returns:
    An ``optax.GradientTransformation`` with :class:`EmaRmsState`.

  Raises:
    ValueError: if ``decay`` is outside [0, 1) or ``eps <= 0``.
  """
  return scale_by_preconditioner(ema_rms(decay, eps, bias_correction))
