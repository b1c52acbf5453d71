"""Argument checks shared by the transforms and the framework front ends.

Hyperparameters may arrive as Python numbers, concrete arrays, or JAX tracers
(``optax.inject_hyperparams`` and the bridges feed them in as traced values).
A tracer has no value to check, so it is let through: its concrete value was
checked where it entered (or it is the user's responsibility under tracing).
"""

from __future__ import annotations

import math
from typing import Any

import jax


def _concrete_float(value: Any) -> float | None:
  """Returns ``value`` as a float, or None if it has no concrete scalar value."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def check_positive(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` is > 0 (schedules and tracers pass).

  Raises:
    ValueError: naming ``name`` and the accepted range.
  """
  number = _concrete_float(value)
  if number is not None and not (number > 0 and math.isfinite(number)):
    raise ValueError(f'{name} must be a finite number > 0, got {value!r}.')


def check_non_negative(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` is >= 0 (schedules and tracers pass).

  A learning rate of 0 is valid (a cosine schedule ends there), as in
  ``torch.optim``.

  Raises:
    ValueError: naming ``name`` and the accepted range.
  """
  number = _concrete_float(value)
  if number is not None and not (number >= 0 and math.isfinite(number)):
    raise ValueError(f'{name} must be a finite number >= 0, got {value!r}.')


def check_unit_interval(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` lies in [0, 1) (tracers pass).

  Raises:
    ValueError: naming ``name`` and the accepted range.
  """
  number = _concrete_float(value)
  if number is not None and not 0.0 <= number < 1.0:
    raise ValueError(f'{name} must be in [0, 1), got {value!r}.')
  if number is None and callable(value):
    raise ValueError(f'{name} must be a number in [0, 1), got a callable.')
