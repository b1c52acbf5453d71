"""Expectigrad as a TF1 optimizer: ``expectigrad.tensorflow1.ExpectigradOptimizer``.

A thin specialisation of :class:`expectigrad.bridges.tf1.Optimizer` over
:func:`expectigrad.expectigrad`, for ``tf.compat.v1`` graphs and Sessions
(ref or resource variables) and for eager use.
"""

from __future__ import annotations

from typing import Any

from expectigrad import hyperparameters
from expectigrad.alias import expectigrad
from expectigrad.bridges import tf1
from expectigrad.bridges._conventions import raveled_layout
from expectigrad.hyperparameters import DEFAULT


class ExpectigradOptimizer(tf1.Optimizer):
  """The Expectigrad optimizer (Daley & Amato, arXiv:2010.01356) for TF1.

  Example::

    train_op = expectigrad.tensorflow1.ExpectigradOptimizer(1e-3).minimize(loss)

  Its slots are ``sum_of_squares``, ``nonzero_count`` (with ``sparse_counter``)
  and ``momentum`` (with ``beta > 0``), raveled (1-D) for variables of two or
  more dimensions whose last dimension is below 16 (see :func:`expectigrad.bridges._conventions.raveled_layout`).

  Args:
    learning_rate: a number >= 0, a scalar tensor, or a callable returning one.
    beta: momentum decay in [0, 1); 0 keeps no momentum slot.
    epsilon: added to the root mean square; must be > 0.
    sparse_counter: count nonzero gradients per element (True) or use the
      global step count (False).
    use_locking: use locking in the assignments of the results.
    name: the optimizer's name.

  Raises:
    ValueError: if a numeric ``learning_rate`` is < 0, ``beta`` is
      outside [0, 1) or ``epsilon <= 0`` (see :mod:`expectigrad.hyperparameters`).
    TypeError: if one of them is not a real number, or ``sparse_counter`` not a bool.
  """

  def __init__(
      self,
      learning_rate: Any = DEFAULT.learning_rate,
      beta: float = DEFAULT.beta,
      epsilon: float = DEFAULT.eps,
      sparse_counter: bool = DEFAULT.sparse_counter,
      use_locking: bool = False,
      name: str = 'Expectigrad',
  ):
    super().__init__(
        raveled_layout(hyperparameters.checked_factory(expectigrad, 'tf1', dict(
            learning_rate=learning_rate, beta=beta, epsilon=epsilon,
            sparse_counter=sparse_counter), schedules=True)),
        learning_rate=learning_rate,
        use_locking=use_locking,
        name=name,
    )
