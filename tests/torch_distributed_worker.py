"""Workers for test_torch_distributed.py: DDP and ZeroRedundancyOptimizer on gloo, loopback only."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

from expectigrad.bridges import _torch_executor
from expectigrad.pytorch import Expectigrad

STEPS = 15
BATCH = 32


def make_model() -> torch.nn.Module:
  torch.manual_seed(0)
  return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def batches():
  generator = torch.Generator().manual_seed(1)
  for _ in range(STEPS):
    yield torch.randn(BATCH, 6, generator=generator, dtype=torch.float64), \
        torch.randint(0, 3, (BATCH,), generator=generator)


def train(model: torch.nn.Module, optimizer, rank: int = 0, world: int = 1) -> None:
  for inputs, labels in batches():
    shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs[shard]), labels[shard]).backward()
    optimizer.step()


def single_process() -> list[torch.Tensor]:
  """The full batch in one process: what both distributed runs must reproduce."""
  model = make_model()
  train(model, Expectigrad(model.parameters(), lr=0.05))
  return [p.detach().clone() for p in model.parameters()]


def worker(rank: int, world: int, port: int, mode: str, cpu_path: str, out_path: str) -> None:
  _torch_executor.CPU_DEFAULT = cpu_path  # which CPU path the default executor takes (conftest.py)
  os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
  dist.init_process_group('gloo', rank=rank, world_size=world)
  try:
    model = DistributedDataParallel(make_model())
    if mode == 'zero':
      optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=Expectigrad, lr=0.05)
    else:
      optimizer = Expectigrad(model.parameters(), lr=0.05)
    train(model, optimizer, rank, world)
    if mode == 'zero':
      optimizer.consolidate_state_dict(to=0)
    if rank == 0:
      state = optimizer.state_dict()
      torch.save({'params': [p.detach() for p in model.module.parameters()],
                  'state_entries': len(state['state'])}, out_path)
  finally:
    dist.destroy_process_group()
  # Skip interpreter teardown: destroying DDP's reducer at exit can deadlock in
  # gloo's thread join (its thread waits for the GIL the joining thread holds).
  os._exit(0)
