"""Expectigrad's hyperparameters, described once for every framework.

Each published optimizer (:func:`expectigrad.expectigrad`,
``expectigrad.pytorch.Expectigrad``, ``expectigrad.tensorflow1.ExpectigradOptimizer``,
``expectigrad.tensorflow2.Expectigrad``) checks its arguments against
:data:`HYPERPARAMETERS` at construction, so a bad value is reported before
any variable or state exists, with the same wording everywhere: a
``TypeError`` for a value that is not a real number (strings, None,
sequences, complex numbers; ``sparse_counter`` must be a bool), a
``ValueError`` for one out of range, both naming the argument as that
framework spells it and the accepted range.

Accepted numbers are Python numbers, numpy scalars and 0-d arrays, and 0-d
tensors (``expectigrad.pytorch`` checks a torch tensor for its kind only:
reading its value would synchronise with its device).

The names and defaults of the published signatures come from here too
(:data:`DEFAULT`, :meth:`Hyperparameter.name_in`); ``tests/test_packaging.py``
holds each published signature to this table.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple

import optax

from expectigrad import _validation

# The published APIs, by the names this module's functions take.
FRAMEWORKS = ('jax', 'torch', 'tf1', 'keras')


class Hyperparameter(NamedTuple):
  """One hyperparameter of :func:`expectigrad.expectigrad`.

  Attributes:
    key: its keyword in :func:`expectigrad.expectigrad`.
    default: its default in every published API.
    check: ``check(name, value, schedules)`` raising TypeError/ValueError.
    names: the argument's name in a framework, where it differs from ``key``.
  """

  key: str
  default: Any
  check: Callable[[str, Any, bool], None]
  names: Mapping[str, str] = {}

  def name_in(self, framework: str) -> str:
    """The argument's name in ``framework``.

    Raises:
      ValueError: if ``framework`` is not one of :data:`FRAMEWORKS` (a typo
        would otherwise give the optax names silently).
    """
    if framework not in FRAMEWORKS:
      raise ValueError(f'framework must be one of {FRAMEWORKS}, got {framework!r}.')
    return self.names.get(framework, self.key)


def _ignore_schedules(check: Callable[[str, Any], None]) -> Callable[[str, Any, bool], None]:
  return lambda name, value, schedules: check(name, value)


# In the order of every published signature.
HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter('learning_rate', 0.001,
                   lambda name, value, schedules: _validation.check_non_negative(
                       name, value, schedules=schedules),
                   {'torch': 'lr'}),
    Hyperparameter('beta', 0.9, _ignore_schedules(_validation.check_unit_interval)),
    Hyperparameter('eps', 1e-8, _ignore_schedules(_validation.check_positive),
                   {'tf1': 'epsilon', 'keras': 'epsilon'}),
    Hyperparameter('sparse_counter', True, _ignore_schedules(_validation.check_bool)),
)


class Defaults(NamedTuple):
  """The defaults of :data:`HYPERPARAMETERS`, by key: what the published signatures read."""

  learning_rate: float
  beta: float
  eps: float
  sparse_counter: bool


DEFAULT = Defaults(**{h.key: h.default for h in HYPERPARAMETERS})


def check(framework: str, values: Mapping[str, Any], schedules: bool = False) -> None:
  """Checks Expectigrad's hyperparameters as one framework names them.

  Args:
    framework: one of :data:`FRAMEWORKS`; decides the names in messages.
    values: hyperparameter values keyed by the framework's names; missing
      ones are not checked.
    schedules: whether the learning rate may be a schedule or callable.

  Raises:
    TypeError: naming the argument, for a value of the wrong type.
    ValueError: naming the argument and its range, for a value out of range.
  """
  for hyperparameter in HYPERPARAMETERS:
    name = hyperparameter.name_in(framework)
    if name in values:
      hyperparameter.check(name, values[name], schedules)


def optax_keywords(framework: str, values: Mapping[str, Any]) -> dict[str, Any]:
  """The keyword arguments of :func:`expectigrad.expectigrad` for a framework's values.

  Args:
    framework: one of :data:`FRAMEWORKS`; decides the names in ``values``.
    values: hyperparameter values keyed by the framework's names.

  Returns:
    The values present, keyed by :attr:`Hyperparameter.key`, learning rate
    excluded: the bridges pass it as ``learning_rate=`` at every step.
  """
  return {h.key: values[h.name_in(framework)] for h in HYPERPARAMETERS
          if h.key != 'learning_rate' and h.name_in(framework) in values}


def checked_factory(factory: Callable[..., optax.GradientTransformation], framework: str,
                    values: Mapping[str, Any], schedules: bool = False
                    ) -> Callable[..., optax.GradientTransformation]:
  """``factory`` awaiting ``learning_rate=``, from checked values.

  What the TF1 and Keras optimizers hand to their bridge, with
  :func:`expectigrad.expectigrad` as ``factory`` (passed in: the alias reads
  its defaults from this module): the bridge calls it with the current
  learning rate inside the compiled step.

  Args:
    factory: takes optax's keyword names (:func:`expectigrad.expectigrad`).
    framework: one of :data:`FRAMEWORKS`; decides the names in ``values``.
    values: every hyperparameter, keyed by the framework's names.
    schedules: whether the learning rate may be a schedule or callable.

  Returns:
    ``learning_rate -> optax.GradientTransformation``.

  Raises:
    TypeError, ValueError: as :func:`check`.
  """
  check(framework, values, schedules)
  return functools.partial(factory, **optax_keywords(framework, as_floats(values)))


def as_floats(values: Mapping[str, Any]) -> dict[str, Any]:
  """Checked values with every concrete real number as a Python float.

  numpy scalars, 0-d arrays and eager TF tensors become floats, so they can be
  baked into a traced chain (JAX cannot trace a TF tensor) or handed to Keras
  (which takes a float learning rate). Bools, schedules and symbolic
  tensors are returned as they are.
  """
  def plain(name, value):
    if isinstance(value, bool) or callable(value):
      return value
    number = _validation.real_value(name, value, '')
    return value if number is None else number
  return {name: plain(name, value) for name, value in values.items()}
