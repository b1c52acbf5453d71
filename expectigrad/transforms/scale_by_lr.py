"""The learning-rate step: multiply by ``-learning_rate`` (a number or a schedule)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from expectigrad import _validation
from expectigrad.transforms import _numerics


class ScaleByLrState(NamedTuple):
  """State of :func:`scale_by_lr` with a schedule.

  Attributes:
    count: int32 number of steps taken, the schedule's argument (saturates).
  """

  count: jax.Array


def scale_by_lr(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
  """Multiplies updates by ``-learning_rate`` so they can be added to parameters.

  The scalar is cast to each leaf's dtype, so the updates keep their dtype.

  Args:
    learning_rate: a number >= 0, or an ``optax.Schedule`` mapping the int32
      step count (0 on the first step) to a learning rate.

  Returns:
    An ``optax.GradientTransformation``; its state is ``optax.EmptyState`` for
    a number and :class:`ScaleByLrState` for a schedule.

  Raises:
    ValueError: if a numeric ``learning_rate`` is negative or not finite.
  """
  _validation.check_non_negative('learning_rate', learning_rate, schedules=True)

  def scale(updates, step_size):
    return jax.tree.map(lambda u: (-jnp.asarray(step_size, u.dtype) * u), updates)

  if callable(learning_rate):

    def init_fn(params):
      del params
      return ScaleByLrState(_numerics.zero_count())

    def update_fn(updates, state, params=None):
      del params
      step_size = learning_rate(state.count)
      return scale(updates, step_size), ScaleByLrState(_numerics.increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)

  def update_constant(updates, state, params=None):
    del params
    return scale(updates, learning_rate), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_constant)
