"""Any optax chain as a Keras 3 optimizer (TensorFlow backend).

The chain runs as one converted XLA computation over all the variables (see
:mod:`expectigrad.bridges._tf_chain`), so it compiles into ``model.fit``'s XLA
cluster and is saved with the model. Everything the Keras base class does
around the update (clipnorm, clipvalue, global_clipnorm, weight_decay,
gradient accumulation, EMA, loss scaling, the learning-rate schedule) is left
to the base class.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf

from expectigrad.bridges import _tf_chain


class Optimizer(keras.optimizers.Optimizer):
  """A Keras optimizer that updates all variables with one optax chain.

  Example::

    import functools, optax, expectigrad
    from expectigrad.bridges import keras as bridge

    chain = lambda learning_rate: optax.chain(
        optax.clip_by_global_norm(1.0), expectigrad.expectigrad(learning_rate))
    model.compile(optimizer=bridge.Optimizer(chain, learning_rate=1e-3), loss=...)

  The chain sees the parameters as a dict keyed by the variables' paths, so
  ``optax.masked`` / ``optax.multi_transform`` can select them by name. Its
  state lives in Keras variables made in :meth:`build`: one per state array
  that mirrors a parameter (named ``<variable path>_<state path>``) and one
  per global array (step counts). A trainable variable that receives no
  gradient is skipped with its optimizer state, as in ``torch.optim``. ``tf.IndexedSlices`` gradients are densified (duplicate rows summed).

  Args:
    transform: an ``optax.GradientTransformation`` used as is (it carries its
      own learning rate; ``learning_rate`` then only scales Keras's
      ``weight_decay``), or a factory called as ``transform(learning_rate=lr)``
      with the current Keras learning rate inside the compiled step, e.g.
      ``expectigrad.expectigrad`` or ``functools.partial(expectigrad.expectigrad, beta=0.8)``.
    learning_rate: a float, a ``keras.optimizers.schedules.LearningRateSchedule``
      or a zero-argument callable, as for any Keras optimizer.
    name: the optimizer's name.
    **kwargs: Keras's own optimizer arguments (``clipnorm``, ``clipvalue``,
      ``global_clipnorm``, ``weight_decay``, ``gradient_accumulation_steps``, ...).

  Raises:
    TypeError: if ``transform`` is neither a transformation nor callable.
  """

  def __init__(
      self,
      transform: _tf_chain.TransformOrFactory,
      learning_rate: Any = 0.001,
      name: str | None = None,
      **kwargs,
  ):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    _tf_chain.as_factory(transform)  # fail at construction, not at the first step
    self._transform = transform

  def build(self, variables: Sequence[keras.Variable]) -> None:
    """Creates the optimizer variables holding the chain's state for ``variables``."""
    if self.built:
      return
    super().build(variables)
    self._chain = _tf_chain.ConvertedChain(
        self._transform,
        names=[variable.path for variable in variables],
        shapes=[tuple(variable.shape) for variable in variables],
        dtypes=[tf.as_dtype(variable.dtype) for variable in variables],
    )
    # The chain's init may depend on parameter values (e.g. lookahead), so it
    # runs on the current values. init_scope creates the variables eagerly even
    # when the first apply_gradients (inside a tf.function) builds the
    # optimizer: XLA cannot lift variables initialised from such values.
    with tf.init_scope():
      initial = self._chain.init([variable.value for variable in variables])
      self._state = [self._add_state_variable(leaf, value, variables)
                     for leaf, value in zip(self._chain.leaves, initial)]
    self._step = self._chain.assigning_step()

  def _add_state_variable(self, leaf: _tf_chain.StateLeaf, value: tf.Tensor, variables):
    name = leaf.name
    if leaf.param_index is not None:  # named like Keras's slots: '<variable path>_<slot>'
      name = f"{variables[leaf.param_index].path.replace('/', '_')}_{leaf.name}"
    # Not add_variable_from_reference: a counter is int32 whatever the parameter's dtype.
    return self.add_variable(
        leaf.shape, initializer=lambda shape, dtype: value, dtype=leaf.dtype.name, name=name
    )

  def _backend_update_step(self, grads, trainable_variables, learning_rate):
    """Runs the chain once over all built variables (replaces the per-variable loop).

    Under a ``tf.distribute`` strategy this runs in each replica: the
    gradients are summed over the replicas (Keras's losses are already
    divided by their number), then, as in Keras's own optimizers, a
    ``merge_call`` switches to cross-replica context, where the step runs once
    per device on that device's copies of the mirrored variables.
    """
    trainable_variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
    grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, trainable_variables)))
    present = {self._var_key(v): g for g, v in grads_and_vars if g is not None}
    gradients = []
    for variable in self._trainable_variables:
      gradient = present.get(self._var_key(variable))
      gradients.append(
          tf.zeros(variable.shape, variable.dtype)
          if gradient is None
          else _tf_chain.dense_gradient(gradient, variable.value)
      )
    frozen = tuple(i for i, variable in enumerate(self._trainable_variables)
                   if self._var_key(variable) not in present)
    tf.__internal__.distribute.interim.maybe_merge_call(
        lambda distribution, *args: self._step_on_each_device(distribution, *args, frozen=frozen),
        self._distribution_strategy,
        gradients,
        self._chain.learning_rate_tensor(learning_rate),
    )

  def _step_on_each_device(self, distribution, gradients, learning_rate, frozen):
    """Cross-replica context: one step per device, on its local copies of everything."""
    local = distribution.experimental_local_results
    params = [local(variable.value) for variable in self._trainable_variables]
    state = [local(variable.value) for variable in self._state]
    gradients = [local(gradient) for gradient in gradients]
    learning_rates = local(learning_rate)
    for device, rate in enumerate(learning_rates):
      on_device = lambda values: [v[device] for v in values]  # pylint: disable=cell-var-from-loop
      with tf.device(params[0][device].device):
        self._step(on_device(params), on_device(state), on_device(gradients), rate, frozen)
