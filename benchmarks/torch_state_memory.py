"""Optimizer state bytes per parameter element and rank, under torch's shardings.

For the same float32 MLP, each optimizer (Expectigrad against
``torch.optim.Adam``) takes one step in one process, and on gloo over
loopback under FSDP2 (``fully_shard``, 2 ranks), HSDP (2x2 ranks) and tensor
parallelism (``ColwiseParallel``/``RowwiseParallel``, 2 ranks). The bytes of
the state tensors rank 0 holds (the local shards of DTensors, step counts
included) are divided by the parameter elements it holds::

    python -m benchmarks.torch_state_memory

Expectigrad keeps three tensors per parameter (sum of squares, int32 nonzero
count, momentum: 12 bytes an element in float32), Adam two (8 bytes); a
sharding that splits the parameters over k ranks must split the state alike.
On a GPU, ``torch.cuda.max_memory_allocated`` would also count transient
buffers; on the CPU the state tensors are what is measured.
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Input width, then each Linear layer's outputs (its rows: sharded by FSDP2 and ColwiseParallel).
WIDTHS = (512, 1024, 8)
# name -> (layout, processes)
SHARDINGS = {'one process': (None, 1), 'FSDP2 (2 ranks)': ('fsdp', 2),
             'HSDP (2x2 ranks)': ('hsdp', 4), 'tensor parallel (2 ranks)': ('tp', 2)}


def _optimizers() -> dict[str, Callable[[Any], torch.optim.Optimizer]]:
  from expectigrad.pytorch import Expectigrad  # pylint: disable=import-outside-toplevel
  return {'Expectigrad': lambda params: Expectigrad(params, lr=1e-3),
          'torch.optim.Adam': lambda params: torch.optim.Adam(params, lr=1e-3)}


def _local_bytes(tensor: torch.Tensor, attribute: str) -> int:
  """``nbytes`` or ``numel`` of this rank's part of ``tensor``."""
  local = tensor.to_local() if hasattr(tensor, 'to_local') else tensor
  return local.nbytes if attribute == 'nbytes' else local.numel()


def state_bytes_per_element(params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> float:
  """The optimizer state bytes this rank holds per parameter element it holds.

  A tensor held by several parameters (a shared step count) counts once.
  """
  state = {id(t): t for p in params for t in optimizer.state[p].values()
           if isinstance(t, torch.Tensor)}
  return (sum(_local_bytes(t, 'nbytes') for t in state.values())
          / sum(_local_bytes(p, 'numel') for p in params))


def _model() -> torch.nn.Module:
  torch.manual_seed(0)
  layers = []
  for width_in, width_out in zip(WIDTHS, WIDTHS[1:]):
    layers += [torch.nn.Linear(width_in, width_out), torch.nn.ReLU()]
  return torch.nn.Sequential(*layers[:-1])


def _shard(model: torch.nn.Module, layout: str | None, world: int) -> None:
  # pylint: disable=import-outside-toplevel
  from torch.distributed.device_mesh import init_device_mesh
  from torch.distributed.fsdp import fully_shard
  from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                 parallelize_module)
  if layout == 'tp':
    parallelize_module(model, init_device_mesh('cpu', (world,)),
                       {'0': ColwiseParallel(), '2': RowwiseParallel()})
  elif layout is not None:
    mesh = (init_device_mesh('cpu', (2, world // 2), mesh_dim_names=('replicate', 'shard'))
            if layout == 'hsdp' else init_device_mesh('cpu', (world,)))
    for layer in model:
      if isinstance(layer, torch.nn.Linear):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _measure(rank: int, world: int, port: int, layout: str | None, out: str) -> None:
  """Every optimizer for one step of the sharded model; rank 0 writes ``{name: bytes/element}``."""
  os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
  dist.init_process_group('gloo', rank=rank, world_size=world)
  try:
    found = {}
    for name, make in _optimizers().items():
      model = _model()
      _shard(model, layout, world)
      optimizer = make(model.parameters())
      model(torch.randn(4, WIDTHS[0])).square().mean().backward()
      optimizer.step()
      found[name] = state_bytes_per_element(list(model.parameters()), optimizer)
    if rank == 0:
      torch.save(found, out)
  finally:
    dist.destroy_process_group()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def measure(layout: str | None, world: int) -> dict[str, float]:
  """``{optimizer: state bytes per parameter element on rank 0}`` under one sharding."""
  with tempfile.TemporaryDirectory() as directory:
    out = os.path.join(directory, 'rank0.pt')
    mp.spawn(_measure, args=(world, _free_port(), layout, out), nprocs=world, join=True)
    return torch.load(out, weights_only=True)


def table() -> str:
  """The Markdown table of :func:`measure` for every sharding."""
  names = list(_optimizers())
  lines = ['| sharding | ' + ' | '.join(names) + ' |', '|---|' + '---:|' * len(names)]
  for sharding, (layout, world) in SHARDINGS.items():
    found = measure(layout, world)
    lines.append(f'| {sharding} | ' + ' | '.join(f'{found[n]:.4f}' for n in names) + ' |')
  return '\n'.join(lines)


if __name__ == '__main__':
  print(table())
