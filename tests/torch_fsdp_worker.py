"""Workers for test_torch_fsdp.py: DTensor parameters on gloo, loopback only.

Each worker process builds the same float64 model, shards it (FSDP2's
``fully_shard`` over a 1-D mesh, HSDP over a 2x2 mesh, or tensor parallel
with ``ColwiseParallel``/``RowwiseParallel``), trains it with each optimizer
of :data:`OPTIMIZERS` and saves the full parameters and state (rank 0).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import optax
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import expectigrad
from expectigrad.bridges.torch import Optimizer
from expectigrad.pytorch import Expectigrad

STEPS = 5
BATCH = 8

# name -> (make the optimizer, whether its step is torch.compile'd by the caller).
OPTIMIZERS: dict[str, tuple[Callable[[Any], torch.optim.Optimizer], bool]] = {
    'expectigrad': (lambda params: Expectigrad(params, lr=1e-2), False),
    'expectigrad compile=True': (
        lambda params: Optimizer(params, expectigrad.expectigrad, lr=1e-2, compile=True), False),
    'expectigrad in torch.compile': (lambda params: Expectigrad(params, lr=1e-2), True),
    'clip_by_global_norm + expectigrad': (lambda params: Optimizer(
        params, optax.chain(optax.clip_by_global_norm(0.05), expectigrad.expectigrad(1e-2))), False),
    'optax.lamb': (lambda params: Optimizer(params, optax.lamb(1e-2)), False),
    'optax.adafactor': (lambda params: Optimizer(
        params, optax.adafactor(1e-2, min_dim_size_to_factor=4)), False),
    'optax.contrib.muon': (lambda params: Optimizer(params, optax.contrib.muon(1e-2)), False),
}


def make_model() -> torch.nn.Module:
  """32 rows over 2 ranks shard evenly; 5 rows do not."""
  torch.manual_seed(0)
  return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                             torch.nn.Linear(32, 5)).double()


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
  generator = torch.Generator().manual_seed(1)
  return [(torch.randn(BATCH, 16, generator=generator, dtype=torch.float64),
           torch.randn(BATCH, 5, generator=generator, dtype=torch.float64)) for _ in range(STEPS)]


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, compiled: bool,
          part: slice = slice(None), steps: slice = slice(None)) -> None:
  """Steps on the batches ``steps``, each cut to its ``part`` (this rank's data)."""
  step = torch.compile(optimizer.step) if compiled else optimizer.step
  for inputs, targets in batches()[steps]:
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(inputs[part]), targets[part]).backward()
    step()


def whole(tensor: torch.Tensor) -> torch.Tensor:
  """The full value of a DTensor (gathered), or a plain tensor, detached."""
  return (tensor.full_tensor() if hasattr(tensor, 'full_tensor') else tensor).detach().clone()


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
  return {'params': [whole(p) for p in model.parameters()],
          'state': [{k: whole(v) for k, v in optimizer.state[p].items()}
                    for p in model.parameters()]}


def shard(model: torch.nn.Module, layout: str, rank: int, world: int) -> slice:
  """Distributes ``model`` in place; returns this rank's part of each batch."""
  if layout == 'tp':  # every rank sees the whole batch
    parallelize_module(model, init_device_mesh('cpu', (world,)),
                       {'0': ColwiseParallel(), '2': RowwiseParallel()})
    return slice(None)
  if layout == 'hsdp':
    mesh = init_device_mesh('cpu', (2, world // 2), mesh_dim_names=('replicate', 'shard'))
  else:
    mesh = init_device_mesh('cpu', (world,))
  for layer in model:
    if isinstance(layer, torch.nn.Linear):
      fully_shard(layer, mesh=mesh)
  fully_shard(model, mesh=mesh)
  return slice(rank * BATCH // world, (rank + 1) * BATCH // world)


def _init(rank: int, world: int, port: int) -> None:
  os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
  dist.init_process_group('gloo', rank=rank, world_size=world)


def train_all(rank: int, world: int, port: int, layout: str, names: list[str], out: str) -> None:
  """Trains a sharded model with each named optimizer; rank 0 saves their snapshots."""
  _init(rank, world, port)
  try:
    results = {}
    for name in names:
      make, compiled = OPTIMIZERS[name]
      model = make_model()
      part = shard(model, layout, rank, world)
      optimizer = make(model.parameters())
      train(model, optimizer, compiled, part)
      results[name] = snapshot(model, optimizer)
    if rank == 0:
      torch.save(results, out)
  finally:
    dist.destroy_process_group()


def checkpoint(rank: int, world: int, port: int, directory: str, out: str) -> None:
  """FSDP2 on ``world`` ranks: 3 steps, a DCP save, 2 more steps; then a resume from the save.

  Rank 0 saves the snapshots after the uninterrupted run, right after the
  resume, and after the resumed run.
  """
  _init(rank, world, port)
  try:
    model = make_model()
    part = shard(model, 'fsdp', rank, world)
    optimizer = Expectigrad(model.parameters(), lr=1e-2)
    train(model, optimizer, False, part, slice(0, 3))
    dcp.save({'model': get_model_state_dict(model),
              'optim': get_optimizer_state_dict(model, optimizer)}, checkpoint_id=directory)
    saved = snapshot(model, optimizer)
    train(model, optimizer, False, part, slice(3, None))
    uninterrupted = snapshot(model, optimizer)

    model = make_model()
    part = shard(model, 'fsdp', rank, world)
    optimizer = Expectigrad(model.parameters(), lr=1e-2)
    resume(model, optimizer, directory)
    loaded = snapshot(model, optimizer)
    train(model, optimizer, False, part, slice(3, None))
    resumed = snapshot(model, optimizer)  # (gathers: on every rank)
    if rank == 0:
      torch.save({'saved': saved, 'uninterrupted': uninterrupted, 'loaded': loaded,
                  'resumed': resumed}, out)
  finally:
    dist.destroy_process_group()


def resume(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: str) -> None:
  """Loads a DCP checkpoint of :func:`checkpoint` into ``model`` and ``optimizer``, as a user would."""
  state = {'model': get_model_state_dict(model),
           'optim': get_optimizer_state_dict(model, optimizer)}
  dcp.load(state, checkpoint_id=directory)
  set_model_state_dict(model, state['model'])
  set_optimizer_state_dict(model, optimizer, optim_state_dict=state['optim'])
