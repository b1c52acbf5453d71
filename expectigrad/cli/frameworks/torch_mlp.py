"""The demo MLP in PyTorch, trained by torch.optim and ``expectigrad.pytorch``."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from expectigrad.cli.frameworks import EPSILON, LEARNING_RATES, MOMENTUM
# Imported here, not lazily, so a missing bridge is reported before training starts.
from expectigrad.pytorch import Expectigrad

# The demo's matrices are tiny (64 x 64): extra threads only add synchronisation,
# and on a busy 2-core machine their spin-waits made a step 48 ms instead of
# 1.3 ms (measured with torch.optim.Adam). This demo process runs single-threaded.
torch.set_num_threads(1)


def _optimizer(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
  lr = LEARNING_RATES[name]
  if name == 'expectigrad':
    return Expectigrad(params, lr=lr, beta=MOMENTUM, eps=EPSILON)
  if name in ('adam', 'amsgrad'):
    return torch.optim.Adam(params, lr=lr, betas=(MOMENTUM, 0.999), eps=EPSILON,
                            amsgrad=name == 'amsgrad')
  return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)


class TorchTrainer:
  """The usual zero_grad / backward / step loop over four parameter tensors."""

  def __init__(self, init_params: Sequence[np.ndarray], optimizer: str):
    self._params = [torch.tensor(p, requires_grad=True) for p in init_params]
    self._optimizer = _optimizer(optimizer, self._params)

  def _logits(self, x: np.ndarray) -> torch.Tensor:
    w1, b1, w2, b2 = self._params
    return torch.relu(torch.from_numpy(x) @ w1 + b1) @ w2 + b2

  def step(self, x: np.ndarray, y: np.ndarray) -> None:
    self._optimizer.zero_grad()
    torch.nn.functional.cross_entropy(self._logits(x), torch.from_numpy(y).long()).backward()
    self._optimizer.step()

  def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    with torch.no_grad():
      logits = self._logits(x)
      labels = torch.from_numpy(y).long()
      loss = torch.nn.functional.cross_entropy(logits, labels)
      accuracy = (logits.argmax(dim=-1) == labels).float().mean()
    return float(loss), float(accuracy)


make_trainer = TorchTrainer
