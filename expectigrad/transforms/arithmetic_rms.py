"""Expectigrad's denominator: the arithmetic (true) mean of squared gradients."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from expectigrad import _validation
from expectigrad.transforms import _numerics
from expectigrad.transforms.preconditioner import Preconditioner, scale_by_preconditioner


class ArithmeticRmsState(NamedTuple):
  """State of :func:`arithmetic_rms`.

  Attributes:
    count: int32 number of steps taken (saturates at 2**31 - 1).
    sum_of_squares: running sum of squared gradients, one per parameter.
    nonzero_count: int32 per-element number of steps with a nonzero gradient
      (the "sparse counter"), or None when the global ``count`` is used.
    compensation: with ``compensated_sum``, the rounding error of
      ``sum_of_squares`` still to be added back (Kahan summation), one per
      parameter; else None.
  """

  count: jax.Array
  sum_of_squares: optax.Updates
  nonzero_count: Optional[optax.Updates]
  compensation: Optional[optax.Updates] = None


def arithmetic_rms(
    eps: float = 1e-8, sparse_counter: bool = True, state_dtype: Any = None,
    compensated_sum: bool = False,
) -> Preconditioner:
  """The preconditioner ``eps + sqrt(s / n)`` with ``s`` a sum, not an EMA.

  ``s`` accumulates ``g**2`` over all steps and ``n`` counts them, so
  ``sqrt(s / n)`` is the root of the true mean of the squared gradients seen
  so far. With ``sparse_counter`` each element counts only the steps on which
  its gradient was nonzero, so rarely-updated coordinates (embeddings) are not
  diluted by the steps that did not touch them. ``0 / 0`` is taken as 0: an
  element that has never had a nonzero gradient gets denominator ``eps``.

  A float32 sum stops absorbing small terms once it is large: with squared
  gradients of equal size its mean is 1.6% low after 1e7 steps and 33% low
  after 1.2e8 (``python -m benchmarks.bench_long_runs``). ``compensated_sum``
  keeps the rounding error of every addition in a second buffer and adds it
  back at the next step (Kahan summation), which keeps the mean exact to a
  few ulps for any number of steps, at the cost of one more state buffer.

  Args:
    eps: added to the root mean square; must be > 0.
    sparse_counter: count nonzero gradients per element (True) or use the
      global step count for every element (False).
    state_dtype: dtype of the sum of squares; None means the parameter's
      dtype, promoted to at least float32.
    compensated_sum: keep the sum of squares with Kahan summation (one more
      buffer of ``state_dtype``).

  Returns:
    A :class:`Preconditioner` with :class:`ArithmeticRmsState`.

  Raises:
    ValueError: if ``eps <= 0``.
    TypeError: if ``eps`` is not a real number, or ``sparse_counter`` or
      ``compensated_sum`` not a bool.
  """
  _validation.check_positive('eps', eps)
  _validation.check_bool('sparse_counter', sparse_counter)
  _validation.check_bool('compensated_sum', compensated_sum)

  def init(params):
    _numerics.check_parameters(params)
    return ArithmeticRmsState(
        count=_numerics.zero_count(),
        sum_of_squares=_numerics.zeros_for_state(params, state_dtype, real=True),
        nonzero_count=(
            _numerics.zeros_for_state(params, jnp.int32)
            if sparse_counter
            else None
        ),
        compensation=(
            _numerics.zeros_for_state(params, state_dtype, real=True) if compensated_sum else None
        ),
    )

  def accumulate(gradients, state):
    _numerics.check_gradients(gradients, state=state.sum_of_squares)
    squares = jax.tree.map(_numerics.square_in_state, gradients, state.sum_of_squares)
    compensation = state.compensation
    if compensated_sum:
      # Two maps over the same expressions: jit computes them once.
      new = lambda part: jax.tree.map(lambda s, c, g2: _numerics.kahan_add(s, c, g2)[part],
                                      state.sum_of_squares, compensation, squares)
      sum_of_squares, compensation = new(0), new(1)
    else:
      sum_of_squares = jax.tree.map(jnp.add, state.sum_of_squares, squares)
    nonzero_count = state.nonzero_count
    if sparse_counter:
      nonzero_count = jax.tree.map(
          lambda n, g2: _numerics.increment_where(n, g2 != 0), nonzero_count, squares
      )
    return ArithmeticRmsState(
        count=_numerics.increment(state.count),
        sum_of_squares=sum_of_squares,
        nonzero_count=nonzero_count,
        compensation=compensation,
    )

  def scale(tree, state):
    def divide(u, s, n):
      # s == 0 wherever n == 0 (both grow only on a nonzero g**2), so dividing
      # by max(n, 1) realises 0/0 := 0 without a select in the fused loop.
      return _numerics.divide_by_rms(u, s / jnp.maximum(n, 1).astype(s.dtype), eps)

    if sparse_counter:
      return jax.tree.map(divide, tree, state.sum_of_squares, state.nonzero_count)
    return jax.tree.map(
        lambda u, s: divide(u, s, state.count), tree, state.sum_of_squares
    )

  return Preconditioner(init, accumulate, scale)


def scale_by_arithmetic_rms(
    eps: float = 1e-8, sparse_counter: bool = True, state_dtype: Any = None,
    compensated_sum: bool = False,
) -> optax.GradientTransformation:
  """Scales updates by ``1 / (eps + sqrt(s / n))``, Expectigrad's denominator.

  See :func:`arithmetic_rms` for the statistics. In a chain, place it first
  (it must see raw gradients) and follow it with
  :func:`~expectigrad.transforms.outer_momentum`.

  Args:
    eps: added to the root mean square; must be > 0.
    sparse_counter: count nonzero gradients per element (True) or use the
      global step count for every element (False).
    state_dtype: dtype of the sum of squares; None means the parameter's
      dtype, promoted to at least float32.
    compensated_sum: keep the sum of squares with Kahan summation (see
      :func:`arithmetic_rms`).

  Returns:
    An ``optax.GradientTransformation`` with :class:`ArithmeticRmsState`.

  Raises:
    ValueError: if ``eps <= 0``.
    TypeError: as :func:`arithmetic_rms`.
  """
  return scale_by_preconditioner(
      arithmetic_rms(eps, sparse_counter, state_dtype, compensated_sum))
