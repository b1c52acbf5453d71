"""Any optax chain as a ``tf.compat.v1.train.Optimizer`` (graph Sessions and eager).

The chain runs as one converted XLA computation over all the variables of an
``apply_gradients`` call (see :mod:`expectigrad.bridges._tf_chain`). Its state
lives in TF1 slots (state arrays that mirror a variable, see
:meth:`~tf.compat.v1.train.Optimizer.get_slot`) and non-slot variables
(global step counts), created like any TF1 optimizer's, through TF's private
API for them (:mod:`._private_tf`).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from expectigrad.bridges import _conventions, _private_tf, _tf_chain


def _name(variable) -> str:
  """A variable's name without the output index (``'dense/kernel'``)."""
  return variable.name.split(':')[0]


def _is_resource(variable) -> bool:
  return isinstance(variable, tf.Variable) and hasattr(variable, 'handle')


def _initial_value(variable) -> tf.Tensor:
  """The value the optimizer state is initialised from.

  In a graph the variable may not be initialised yet, so its initial value is
  used (as TF1 slot initialisers do); eagerly, its current value.
  """
  if tf.executing_eagerly():
    return tf.convert_to_tensor(variable)
  return variable.initial_value


class Optimizer(tf.compat.v1.train.Optimizer):
  """A TF1 optimizer that updates all the variables of a step with one optax chain.

  Each ``apply_gradients`` call runs the chain once over its variables;
  ``tf.IndexedSlices`` gradients are densified first (duplicate indices summed,
  untouched rows get a zero gradient, exactly the dense semantics). The chain
  sees the parameters as a dict keyed by the variables' names. One
  optimizer serves one list of variables (the chain's step counts are shared
  by all of them); make one optimizer per list.

  Args:
    transform: an ``optax.GradientTransformation`` used as is, or a factory
      called as ``transform(learning_rate=lr)`` inside the compiled step, e.g.
      ``expectigrad.expectigrad``.
    learning_rate: a number, a scalar tensor, or a callable returning one
      (evaluated at every ``apply_gradients`` in eager mode, once when building
      a graph).
    use_locking: use locking in the assignments of the results.
    name: the optimizer's name, and the name scope of its variables.

  Raises:
    TypeError: if ``transform`` is neither a transformation nor callable
      (the bridges' contract, see :mod:`expectigrad.bridges._conventions`).
  """

  def __init__(
      self,
      transform: _tf_chain.TransformOrFactory,
      learning_rate: Any = 0.001,
      use_locking: bool = False,
      name: str = 'OptaxChain',
  ):
    super().__init__(use_locking=use_locking, name=name)
    # Fails at construction, not at the first step.
    self._transform = _conventions.check_transform(transform)
    self._learning_rate = learning_rate
    self._chain: _tf_chain.ConvertedChain | None = None
    self._chain_variables: tuple | None = None
    self._step = None

  def _build_chain(self, var_list) -> _tf_chain.ConvertedChain:
    """Converts the chain for ``var_list`` once and creates its slots."""
    keys = tuple(_private_tf.variable_key(v) for v in var_list)
    if self._chain is not None:
      if keys != self._chain_variables:
        raise ValueError(
            f'{self.get_name()} already updates {len(self._chain_variables)} other variables; '
            'use one optimizer per list of variables.'
        )
      return self._chain
    self._chain = _tf_chain.ConvertedChain(
        self._transform,
        names=[_name(v) for v in var_list],
        shapes=[tuple(v.shape.as_list()) for v in var_list],
        dtypes=[v.dtype.base_dtype for v in var_list],
    )
    self._chain_variables = keys
    with tf.init_scope():
      initial = self._chain.init([_initial_value(v) for v in var_list])
      for leaf, value in zip(self._chain.leaves, initial):
        if leaf.owner is None:
          _private_tf.create_non_slot_variable(self, value, leaf.name, colocate_with=var_list[0])
        else:
          _private_tf.get_or_make_slot(self, var_list[leaf.owner], value, leaf.name)
    return self._chain

  def _create_or_restore_slot_variable(self, slot_variable_position, slot_name, variable):
    """Defers restoring a checkpointed slot until the chain creates it.

    Eagerly, TF1 would create a missing slot right away with its variable's
    dtype, which cannot hold an int32 counter; under a variable creator scope
    it defers instead, and ``_get_or_make_slot`` restores the value when
    the first ``apply_gradients`` creates the slot with its own dtype.
    Overrides a private hook (:data:`._private_tf.RESTORE_SLOT_HOOK`).
    """
    with tf.variable_creator_scope(lambda next_creator, **kwargs: next_creator(**kwargs)):
      super()._create_or_restore_slot_variable(slot_variable_position, slot_name, variable)

  def _state_variables(self, var_list) -> list:
    # As TF1 keys its non-slot variables: eager programs (tf.function included) have one graph.
    graph = None if tf.compat.v1.executing_eagerly_outside_functions() else var_list[0].graph
    return [
        _private_tf.get_non_slot_variable(self, leaf.name, graph)
        if leaf.owner is None
        else self.get_slot(var_list[leaf.owner], leaf.name)
        for leaf in self._chain.leaves
    ]

  def apply_gradients(self, grads_and_vars, global_step=None, name=None):
    """Runs the chain on ``(gradient, variable)`` pairs; gradients of None are skipped.

    Returns:
      The update op (eagerly: None), which also increments ``global_step``.

    Raises:
      ValueError: if no variable has a gradient, a gradient's shape is not
        its variable's, or the variables differ from the ones this optimizer
        was first applied to.
      TypeError: if a variable is not real floating point (integer, bool or
        complex), before any slot is created.
    """
    grads_and_vars = list(grads_and_vars)
    pairs = [(g, v) for g, v in grads_and_vars if g is not None]
    if not pairs:
      raise ValueError(f'No gradients provided for any variable: {grads_and_vars}.')
    var_list = [v for _, v in pairs]
    for gradient, variable in pairs:
      label = f"variable '{_name(variable)}'"
      _conventions.check_floating(label, variable.dtype.base_dtype)
      shape = _tf_chain.gradient_shape(gradient)
      if shape is not None and variable.shape.is_fully_defined():
        _conventions.check_gradient_shape(label, shape, variable.shape.as_list())
    chain = self._build_chain(var_list)
    state = self._state_variables(var_list)
    gradients = [_tf_chain.dense_gradient(g, v) for g, v in pairs]
    with tf.name_scope(name or self.get_name()):
      learning_rate = chain.learning_rate_tensor(
          _private_tf.call_if_callable(self, self._learning_rate))
      if all(_is_resource(v) for v in var_list + state):
        # One XLA cluster updates the variables in place (4x faster than below).
        if self._step is None:
          self._step = chain.assigning_step()
        assignments = [self._step(var_list, state, gradients, learning_rate)]
      else:  # ref variables cannot enter a tf.function: assign the converted op's results.
        new_params, new_state = chain.update(
            [tf.convert_to_tensor(v) for v in var_list],
            gradients,
            [tf.convert_to_tensor(s) for s in state],
            learning_rate,
        )
        assignments = [
            tf.compat.v1.assign(variable, value, use_locking=_private_tf.use_locking(self))
            for variable, value in zip(var_list + state, list(new_params) + list(new_state))
        ]
      with tf.control_dependencies(assignments):
        if global_step is None:
          return tf.group(*assignments, name=name)
        return tf.compat.v1.assign_add(global_step, 1, name=name)
