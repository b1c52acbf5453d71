"""The published ``expectigrad.pytorch.Expectigrad`` optimizer.

It is the optax bridge (:class:`expectigrad.bridges.torch.Optimizer`) over
:func:`expectigrad.expectigrad`: the update rule runs as the jitted optax
chain, not as torch code.
"""

from __future__ import annotations

from typing import Any, Iterable

from expectigrad import _validation
from expectigrad.alias import expectigrad
from expectigrad.bridges import torch as torch_bridge


class Expectigrad(torch_bridge.Optimizer):
  """Expectigrad (Daley & Amato, arXiv:2010.01356) as a ``torch.optim.Optimizer``.

  ``lr``, ``beta`` and ``eps`` of each param group are read at every step
  (LR schedulers and group edits apply without recompiling). ``beta`` enters
  the compiled step as a traced number, so the momentum buffer is kept even
  for ``beta=0``, where it equals the current scaled gradient; the math is
  the same as without one.

  Args:
    params: parameters or param-group dicts.
    lr: learning rate, > 0.
    beta: momentum decay, in [0, 1).
    eps: added to the root mean square, > 0.
    sparse_counter: count nonzero gradients per element (True) or use the
      global step count (False).

  Raises:
    ValueError: if ``lr <= 0``, ``beta`` is outside [0, 1) or ``eps <= 0``.
  """

  def __init__(
      self,
      params: Iterable[Any],
      lr: float = 0.001,
      beta: float = 0.9,
      eps: float = 1e-8,
      sparse_counter: bool = True,
  ):
    _validation.check_positive('lr', lr)
    _validation.check_unit_interval('beta', beta)
    _validation.check_positive('eps', eps)
    super().__init__(params, expectigrad, lr=lr, beta=beta, eps=eps,
                     sparse_counter=bool(sparse_counter))
