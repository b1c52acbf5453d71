"""Step time of ``expectigrad.pytorch.Expectigrad`` against torch's Adam and a per-parameter loop.

Run ``python -m benchmarks.bench_torch``. All implementations step the same
workload's parameters with fixed gradients, interleaved round by round; ratios
are taken against ``torch.optim.Adam(foreach=True)`` (torch's CPU default)
and against Expectigrad's memory-bandwidth lower bound measured in this run.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from benchmarks import common
from expectigrad.pytorch import Expectigrad

BASELINE = 'torch.optim.Adam(foreach=True)'


class LoopExpectigrad(torch.optim.Optimizer):
  """Expectigrad written per parameter in torch, as the 2020 ``expectigrad`` package did.

  A competitor for the benchmark only: the library never does the math in torch.
  """

  def __init__(self, params, lr=1e-3, beta=0.9, eps=1e-8):
    super().__init__(params, dict(lr=lr, beta=beta, eps=eps))

  @torch.no_grad()
  def step(self, closure=None):
    for group in self.param_groups:
      lr, beta, eps = group['lr'], group['beta'], group['eps']
      for p in group['params']:
        if p.grad is None:
          continue
        state = self.state[p]
        if not state:
          state['step'] = 0
          state['s'] = torch.zeros_like(p)
          state['n'] = torch.zeros_like(p, dtype=torch.int32)
          state['m'] = torch.zeros_like(p)
        state['step'] += 1
        g = p.grad
        square = g * g
        state['s'].add_(square)
        state['n'].add_(square != 0)
        rms = (state['s'] / state['n'].clamp(min=1)).sqrt_().add_(eps)
        state['m'].mul_(beta).add_(g / rms, alpha=1 - beta)
        p.add_(state['m'], alpha=-lr / (1 - beta**state['step']))


def _optimizers(shapes) -> dict[str, Callable[[], None]]:
  """One ``step`` per implementation, each over its own copy of the parameters."""
  generator = torch.Generator().manual_seed(0)
  grads = [torch.randn(shape, generator=generator) for shape in shapes]
  makers = {
      'expectigrad.pytorch.Expectigrad (bridge)': Expectigrad,
      BASELINE: lambda params: torch.optim.Adam(params, foreach=True),
      'torch.optim.Adam(fused=True)': lambda params: torch.optim.Adam(params, fused=True),
      'per-parameter loop Expectigrad (2020 package)': LoopExpectigrad,
  }
  steps = {}
  for name, make in makers.items():
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in shapes]
    for p, g in zip(params, grads):
      p.grad = g.clone()
    steps[name] = make(params).step
  return steps


def run(workloads: Sequence[str] = ('W1', 'W2'), rounds: int = 20) -> list[common.Row]:
  """Times every implementation on each workload, interleaved; returns the rows."""
  bandwidth = common.streaming_bandwidth_gbps()
  rows = []
  for workload in workloads:
    medians = common.interleaved_medians(_optimizers(common.WORKLOADS[workload]), rounds)
    rows += common.make_rows('torch', workload, medians,
                             common.lower_bound_ms(workload, bandwidth), BASELINE)
  return rows


if __name__ == '__main__':
  common.main(run, __doc__.splitlines()[0])
