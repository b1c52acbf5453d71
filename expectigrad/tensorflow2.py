"""Expectigrad as a Keras 3 optimizer: ``expectigrad.tensorflow2.Expectigrad``.

A thin specialisation of :class:`expectigrad.bridges.keras.Optimizer` over
:func:`expectigrad.expectigrad`, registered as Keras-serializable so a saved
``.keras`` model reloads with its optimizer state and no ``custom_objects``.
It runs on every Keras backend (``KERAS_BACKEND=jax``, ``torch`` or
``tensorflow``; the module name is part of the published API), and a
``.keras`` file saved on one backend continues on another.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from expectigrad import _validation, hyperparameters
from expectigrad.alias import expectigrad
from expectigrad.bridges import keras as keras_bridge
from expectigrad.bridges._conventions import raveled_layout
from expectigrad.hyperparameters import DEFAULT


@keras.saving.register_keras_serializable(package='expectigrad')
class Expectigrad(keras_bridge.Optimizer):
  """The Expectigrad optimizer (Daley & Amato, arXiv:2010.01356) for Keras 3, on any backend.

  Example::

    model.compile(optimizer=expectigrad.tensorflow2.Expectigrad(1e-3), loss=...)

  Args:
    learning_rate: a float >= 0, a ``keras.optimizers.schedules.LearningRateSchedule``
      or a zero-argument callable.
    beta: momentum decay in [0, 1); 0 keeps no momentum buffer.
    epsilon: added to the root mean square; must be > 0.
    sparse_counter: count nonzero gradients per element (True) or use the
      global step count (False).
    name: the optimizer's name; None gives a unique snake_case one as Keras's
      own optimizers get (``expectigrad``, ``expectigrad_1``, ...).
    **kwargs: ``lr`` (alias of ``learning_rate``), ``decay`` (inverse-time
      decay ``learning_rate / (1 + decay * iterations)``, as tf.keras's
      legacy optimizers took it), and Keras's own optimizer arguments (``clipnorm``,
      ``clipvalue``, ``global_clipnorm``, ``weight_decay``,
      ``gradient_accumulation_steps``, ...).

  Raises:
    ValueError: if a numeric learning rate is < 0, ``beta`` is outside
      [0, 1), ``epsilon <= 0`` or ``decay < 0`` (see :mod:`expectigrad.hyperparameters`).
    TypeError: if one of them is not a real number, or ``sparse_counter`` not a bool;
      at build, if a variable is not real floating point (see the bridge).
  """

  def __init__(
      self,
      learning_rate: Any = DEFAULT.learning_rate,
      beta: float = DEFAULT.beta,
      epsilon: float = DEFAULT.eps,
      sparse_counter: bool = DEFAULT.sparse_counter,
      name: str | None = None,
      **kwargs,
  ):
    learning_rate = kwargs.pop('lr', learning_rate)
    decay = kwargs.pop('decay', 0.0)
    _validation.check_non_negative('decay', decay)
    values = dict(learning_rate=learning_rate, beta=beta, epsilon=epsilon,
                  sparse_counter=sparse_counter)
    factory = raveled_layout(hyperparameters.checked_factory(expectigrad, 'keras', values,
                                                             schedules=True))
    # Plain floats: Keras takes a float learning rate, and get_config must serialise.
    values = hyperparameters.as_floats({**values, 'decay': decay})
    # ``decay`` as a schedule over the learning rate (Keras's public API), so
    # Keras's weight decay, which scales by the learning rate, sees the decayed rate too.
    learning_rate = values['learning_rate']
    if values['decay']:
      learning_rate = _InverseTimeDecay(learning_rate, values['decay'])
    super().__init__(factory, learning_rate=learning_rate, name=name, **kwargs)
    self._undecayed_learning_rate = values['learning_rate']
    self.beta = values['beta']
    self.epsilon = values['epsilon']
    self.sparse_counter = sparse_counter
    self.decay = values['decay']

  def get_config(self) -> dict[str, Any]:
    """The constructor arguments: ``Expectigrad.from_config(config)`` rebuilds it."""
    config = super().get_config()
    learning_rate = self._undecayed_learning_rate
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
      learning_rate = keras.optimizers.schedules.serialize(learning_rate)
    config.update(learning_rate=learning_rate, beta=self.beta, epsilon=self.epsilon,
                  sparse_counter=self.sparse_counter, decay=self.decay)
    return config


class _InverseTimeDecay(keras.optimizers.schedules.LearningRateSchedule):
  """``learning_rate / (1 + decay * step)`` over a number, a schedule or a callable.

  ``step`` counts completed steps, so the first step uses the undecayed rate.
  Never serialised: :meth:`Expectigrad.get_config` gives the undecayed rate and ``decay``.
  """

  def __init__(self, learning_rate: Any, decay: float):
    self.learning_rate, self.decay = learning_rate, decay

  def __call__(self, step):
    learning_rate = self.learning_rate
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
      learning_rate = learning_rate(step)
    elif callable(learning_rate):
      learning_rate = learning_rate()
    return ops.cast(learning_rate, 'float32') / (1.0 + self.decay * ops.cast(step, 'float32'))

  def get_config(self) -> dict[str, Any]:
    return {'learning_rate': self.learning_rate, 'decay': self.decay}
