"""Keras 3's private APIs, used by the Keras bridge only here.

The bridge runs one chain over all the variables, while Keras calls
``update_step`` once per variable; matching a call to its variable, and
giving state the layout Keras gives its own optimizers' slots, takes three
private names. Each was checked against keras 3.15.1:

- ``Optimizer._get_variable_index(variable)``: the position of a variable
  among the trainable ones, as Keras keys its own per-variable state
  (:func:`variable_index`).
- ``Optimizer._trainable_variables``: the variables the optimizer was built
  for, in that order (:func:`trainable_variables`).
- ``Variable._layout``: a variable's layout under a ``keras.distribution``,
  which ``add_variable_from_reference`` copies to Adam's slots (:func:`layout`).

``tests/test_private_apis.py`` checks each against the installed Keras (:data:`APIS`).
"""

from __future__ import annotations

from typing import Any

import keras

from expectigrad.bridges._private import PrivateApi

_CHECKED = 'keras 3.15.1'


def variable_index(optimizer: Any, variable: Any) -> int:
  """The position of ``variable`` among the optimizer's trainable variables."""
  return optimizer._get_variable_index(variable)  # pylint: disable=protected-access


def trainable_variables(optimizer: Any) -> list:
  """The variables the optimizer was built for, in Keras's order."""
  return optimizer._trainable_variables  # pylint: disable=protected-access


def layout(variable: Any) -> Any:
  """A variable's layout under a ``keras.distribution`` (None without one, or for a ``tf.Variable``)."""
  return getattr(variable, '_layout', None)


APIS = (
    PrivateApi('keras.optimizers.Optimizer._get_variable_index', _CHECKED,
               lambda: keras.optimizers.Optimizer._get_variable_index,  # pylint: disable=protected-access
               ('self', 'variable')),
    PrivateApi('keras.optimizers.Optimizer._trainable_variables', _CHECKED,
               lambda: keras.optimizers.SGD()._trainable_variables),  # pylint: disable=protected-access
    PrivateApi('keras.Variable._layout', _CHECKED,
               lambda: keras.Variable(0.0)._layout),  # pylint: disable=protected-access
)
