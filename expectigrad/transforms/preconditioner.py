"""Diagonal preconditioners, and the transform that divides updates by one.

A preconditioner splits "divide the gradient by a running RMS" into its two
halves: ``accumulate`` folds a raw gradient into the statistics, ``scale``
divides any tree by the current denominator. The split is what lets the
momentum placement be an ablation: Expectigrad divides the raw gradient and
averages afterwards (:func:`~expectigrad.transforms.outer_momentum`), while
Adam averages the raw gradient and divides the average
(:func:`~expectigrad.transforms.inner_momentum`). Both need the same
statistics of the raw gradient, but divide different trees by them.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import optax

from expectigrad.transforms import _numerics


class Preconditioner(NamedTuple):
  """The statistics half and the division half of an RMS scaling.

  Attributes:
    init: ``params -> state``.
    accumulate: ``(gradients, state) -> state`` folds the raw gradients into
      the statistics (and advances any step counter).
    scale: ``(tree, state) -> tree`` divides ``tree`` elementwise by the
      denominator that ``state`` describes (in the wider of the two dtypes).
  """

  init: Callable[[optax.Params], Any]
  accumulate: Callable[[optax.Updates, Any], Any]
  scale: Callable[[optax.Updates, Any], optax.Updates]


def scale_by_preconditioner(
    preconditioner: Preconditioner,
) -> optax.GradientTransformation:
  """Divides the incoming updates by the preconditioner's running denominator.

  The statistics are updated with the incoming updates first, so the current
  gradient counts in its own denominator (as in Adam and Expectigrad).

  Args:
    preconditioner: e.g. :func:`~expectigrad.transforms.arithmetic_rms`.

  Returns:
    An ``optax.GradientTransformation`` whose state is the preconditioner's.
  """

  def update_fn(updates, state, params=None):
    _numerics.check_gradients(updates, params=params)
    state = preconditioner.accumulate(updates, state)
    return preconditioner.scale(updates, state), state

  return optax.GradientTransformation(preconditioner.init, update_fn)
