"""Argument checks shared by the transforms and the framework front ends.

Hyperparameters may arrive as Python numbers, numpy scalars, 0-d arrays or
tensors, or JAX tracers (``optax.inject_hyperparams`` and the bridges feed
them in as traced values). A tracer has no value to check, so it is let
through: its concrete value was checked where it entered (or it is the
user's responsibility under tracing). Anything else that is not a real
number (strings, None, complex numbers, sequences, bools) is a ``TypeError``
naming the argument; a real number out of range is a ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any

import jax


def _is_symbolic_tf_tensor(value: Any) -> bool:
  """Whether ``value`` is a tensor of a TF graph being built (a TF1 graph, a ``tf.function``).

  Such a tensor has no value until the graph runs, so it is let through as a
  tracer is. TensorFlow is only asked when it is already imported: a TF
  tensor cannot exist otherwise, and ``import expectigrad`` must not load it.
  """
  tf = sys.modules.get('tensorflow')
  return tf is not None and tf.is_symbolic_tensor(value)


def real_value(name: str, value: Any, accepted: str, schedules: bool = False) -> float | None:
  """``value`` as a float; None for a tracer (or a schedule, where ``schedules``).

  Raises:
    TypeError: naming ``name`` and ``accepted``, if ``value`` is not a real number.
  """
  if isinstance(value, jax.core.Tracer) or (schedules and callable(value)):
    return None
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    return float(value)
  dtype = str(getattr(value, 'dtype', ''))
  if getattr(value, 'ndim', None) == 0 and not any(k in dtype for k in ('complex', 'bool')):
    return None if _is_symbolic_tf_tensor(value) else float(value)
  kind = 'a number' + (' or a schedule' if schedules else '')
  raise TypeError(f'{name} must be {kind} {accepted}, got {value!r} '
                  f'({type(value).__name__}).')


def check_positive(name: str, value: Any, schedules: bool = False) -> None:
  """Checks that ``value`` is a finite real number > 0 (tracers pass).

  Args:
    name: the argument's name, for the message.
    value: the value to check.
    schedules: whether a callable (a schedule) is accepted unchecked.

  Raises:
    TypeError: if ``value`` is not a real number, naming ``name``.
    ValueError: naming ``name`` and the accepted range.
  """
  number = real_value(name, value, '> 0', schedules)
  if number is not None and not (number > 0 and math.isfinite(number)):
    raise ValueError(f'{name} must be a finite number > 0, got {value!r}.')


def check_non_negative(name: str, value: Any, schedules: bool = False) -> None:
  """Checks that ``value`` is a finite real number >= 0 (tracers pass).

  A learning rate of 0 is valid (a cosine schedule ends there), as in
  ``torch.optim``.

  Args:
    name: the argument's name, for the message.
    value: the value to check.
    schedules: whether a callable (a schedule) is accepted unchecked.

  Raises:
    TypeError: if ``value`` is neither a real number nor callable, naming ``name``.
    ValueError: naming ``name`` and the accepted range.
  """
  number = real_value(name, value, '>= 0', schedules)
  if number is not None and not (number >= 0 and math.isfinite(number)):
    raise ValueError(f'{name} must be a finite number >= 0, got {value!r}.')


def check_unit_interval(name: str, value: Any) -> None:
  """Checks that ``value`` is a real number in [0, 1) (tracers pass).

  Raises:
    TypeError: if ``value`` is not a real number, naming ``name``.
    ValueError: naming ``name`` and the accepted range.
  """
  number = real_value(name, value, 'in [0, 1)')
  if number is not None and not 0.0 <= number < 1.0:
    raise ValueError(f'{name} must be in [0, 1), got {value!r}.')


def check_bool(name: str, value: Any) -> None:
  """Checks that ``value`` is a bool (``'False'`` would silently be true).

  Raises:
    TypeError: naming ``name``.
  """
  if not isinstance(value, bool):
    raise TypeError(f'{name} must be a bool, got {value!r} ({type(value).__name__}).')
