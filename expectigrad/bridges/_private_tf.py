"""TensorFlow's private APIs, used by the TF1 bridge only here.

``tf.compat.v1.train.Optimizer`` keeps its slots and non-slot variables
behind private methods; every TF1 optimizer (Adam's ``_create_slots``
included) makes its state through them, and so does the bridge, so that
``get_slot``, ``variables()`` and checkpoints see its state as any TF1
optimizer's. Each was checked against tensorflow 2.21.0:

- ``Optimizer._get_or_make_slot(var, val, slot_name, op_name)``: a slot
  initialised from a value (:func:`get_or_make_slot`).
- ``Optimizer._create_non_slot_variable(initial_value, name, colocate_with)``
  and ``Optimizer._get_non_slot_variable(name, graph)``: a state variable
  shared by all variables, such as a step count (:func:`create_non_slot_variable`,
  :func:`get_non_slot_variable`).
- ``Optimizer._create_or_restore_slot_variable(slot_variable_position,
  slot_name, variable)``: the hook restoring a checkpointed slot, which the
  bridge overrides to defer the restore (:data:`RESTORE_SLOT_HOOK`).
- ``Optimizer._call_if_callable(param)``: a callable learning rate's value
  (:func:`call_if_callable`).
- ``Optimizer._use_locking``: the constructor's ``use_locking``, which TF1's
  own optimizers read there (:func:`use_locking`).
- ``Variable._unique_id``: an identity that survives re-reading a variable,
  as TF1 keys its own slots (:func:`variable_key`).

``tests/test_private_apis.py`` checks each against the installed TF (:data:`APIS`).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from expectigrad.bridges._private import PrivateApi

_OPTIMIZER = tf.compat.v1.train.Optimizer
_CHECKED = 'tensorflow 2.21.0'

# The base-class method the TF1 bridge overrides (a hook TF calls, not one it calls).
RESTORE_SLOT_HOOK = '_create_or_restore_slot_variable'


def get_or_make_slot(optimizer: Any, variable: Any, value: Any, slot_name: str) -> Any:
  """The slot ``slot_name`` of ``variable``, made from ``value`` if new (named in the optimizer's scope)."""
  return optimizer._get_or_make_slot(variable, value, slot_name, optimizer.get_name())  # pylint: disable=protected-access


def create_non_slot_variable(optimizer: Any, value: Any, name: str, colocate_with: Any) -> Any:
  """A state variable shared by all variables, placed with ``colocate_with``."""
  return optimizer._create_non_slot_variable(value, name, colocate_with=colocate_with)  # pylint: disable=protected-access


def get_non_slot_variable(optimizer: Any, name: str, graph: Any) -> Any:
  """The shared state variable ``name`` of ``graph`` (None: eager programs' one graph)."""
  return optimizer._get_non_slot_variable(name, graph)  # pylint: disable=protected-access


def call_if_callable(optimizer: Any, value: Any) -> Any:
  """``value()`` for a callable (a learning-rate function), else ``value``."""
  return optimizer._call_if_callable(value)  # pylint: disable=protected-access


def use_locking(optimizer: Any) -> bool:
  """The optimizer's ``use_locking`` argument."""
  return optimizer._use_locking  # pylint: disable=protected-access


def variable_key(variable: Any) -> Any:
  """An identity of a variable that survives re-reading it; ``id`` for one without."""
  return getattr(variable, '_unique_id', None) or id(variable)


APIS = (
    PrivateApi('tf.compat.v1.train.Optimizer._get_or_make_slot', _CHECKED,
               lambda: _OPTIMIZER._get_or_make_slot,  # pylint: disable=protected-access
               ('self', 'var', 'val', 'slot_name', 'op_name')),
    PrivateApi('tf.compat.v1.train.Optimizer._create_non_slot_variable', _CHECKED,
               lambda: _OPTIMIZER._create_non_slot_variable,  # pylint: disable=protected-access
               ('self', 'initial_value', 'name', 'colocate_with')),
    PrivateApi('tf.compat.v1.train.Optimizer._get_non_slot_variable', _CHECKED,
               lambda: _OPTIMIZER._get_non_slot_variable,  # pylint: disable=protected-access
               ('self', 'name', 'graph')),
    PrivateApi(f'tf.compat.v1.train.Optimizer.{RESTORE_SLOT_HOOK}', _CHECKED,
               lambda: getattr(_OPTIMIZER, RESTORE_SLOT_HOOK),
               ('self', 'slot_variable_position', 'slot_name', 'variable')),
    PrivateApi('tf.compat.v1.train.Optimizer._call_if_callable', _CHECKED,
               lambda: _OPTIMIZER._call_if_callable,  # pylint: disable=protected-access
               ('self', 'param')),
    PrivateApi('tf.compat.v1.train.Optimizer._use_locking', _CHECKED,
               lambda: _OPTIMIZER(False, 'checked')._use_locking),  # pylint: disable=protected-access
    PrivateApi('tf.Variable._unique_id', _CHECKED,
               lambda: tf.Variable(0.0)._unique_id),  # pylint: disable=protected-access
)
