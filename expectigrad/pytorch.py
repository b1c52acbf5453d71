"""The published ``expectigrad.pytorch.Expectigrad`` optimizer.

It is the torch bridge (:class:`expectigrad.bridges.torch.Optimizer`) over
:func:`expectigrad.expectigrad`: the update rule is the optax chain, traced
once by JAX and run as torch operations.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

from expectigrad import hyperparameters
from expectigrad.alias import expectigrad
from expectigrad.bridges import torch as torch_bridge
from expectigrad.hyperparameters import DEFAULT


class Expectigrad(torch_bridge.Optimizer):
  """Expectigrad (Daley & Amato, arXiv:2010.01356) as a ``torch.optim.Optimizer``.

  Each param group holds ``lr``, ``beta``, ``eps``, ``sparse_counter`` and
  ``maximize`` (False; True ascends, as in ``torch.optim``). ``lr``, ``beta``
  and ``eps`` may be numbers or 0-d tensors; they are read at every step, so
  LR schedulers and group edits apply without re-tracing, and 0-d tensors
  keep a ``torch.compile``'d step from recompiling when they change.
  ``OneCycleLR(cycle_momentum=True)`` cycles ``beta``: it writes the group's
  ``momentum`` key, which, when not None, is read as ``beta``. ``beta``
  enters the step as a traced number, so the momentum buffer is kept even for
  ``beta=0``, where it equals the current scaled gradient.

  Args:
    params: parameters or param-group dicts.
    lr: learning rate, >= 0.
    beta: momentum decay, in [0, 1).
    eps: added to the root mean square, > 0.
    sparse_counter: count nonzero gradients per element (True) or use the
      global step count (False).
    maximize: ascend the objective instead of descending it (keyword only,
      as in ``torch.optim``; also a param-group key).

  Raises:
    ValueError: if ``lr < 0``, ``beta`` is outside [0, 1) or ``eps <= 0``,
      or a tensor ``lr``, ``beta`` or ``eps`` has more than one element.
    TypeError: if ``maximize`` is not a bool, or a hyperparameter is not a
      number or a 0-d floating-point tensor.
  """

  def __init__(
      self,
      params: Iterable[Any],
      lr: float = DEFAULT.learning_rate,
      beta: float = DEFAULT.beta,
      eps: float = DEFAULT.eps,
      sparse_counter: bool = DEFAULT.sparse_counter,
      *,
      maximize: bool = False,
  ):
    super().__init__(params, expectigrad, lr=lr, beta=beta, eps=eps,
                     sparse_counter=sparse_counter, momentum=None, maximize=maximize)

  def _factory_arguments(self, group: Mapping[str, Any]) -> dict[str, Any]:
    """``momentum``, when set (by ``OneCycleLR``), is ``beta``."""
    arguments = super()._factory_arguments(
        {k: v for k, v in group.items() if k != 'momentum'})
    if group.get('momentum') is not None:
      arguments['beta'] = group['momentum']
    return arguments

  def _check_hyperparameters(self, group_index: int, traced: Mapping[str, Any],
                             static: tuple) -> None:
    """Expectigrad's ranges (:mod:`expectigrad.hyperparameters`), in plain Python.

    Plain Python, with no factory call; a tensor is checked for its kind
    only (reading its value would synchronise with its device).
    """
    del group_index
    values = {**dict(static), **traced}
    named = {h.name_in('torch'): values[h.key] for h in hyperparameters.HYPERPARAMETERS}
    for name, value in named.items():
      if isinstance(value, torch.Tensor) and (value.ndim != 0 or not value.is_floating_point()):
        raise TypeError(f'{name} must be a number or a 0-d floating-point tensor, '
                        f'got a {value.dtype} tensor of shape {tuple(value.shape)}.')
    hyperparameters.check('torch', {name: value for name, value in named.items()
                                    if not isinstance(value, torch.Tensor)})
