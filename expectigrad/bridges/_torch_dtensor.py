"""DTensor parameters (FSDP2's ``fully_shard``, tensor parallelism): shards and placements.

The torch optimizer steps DTensor parameters in one of two ways:

- an elementwise chain (:attr:`._torch_flat.FlatChain.usable`) runs on each
  rank's local shards, as for plain tensors: the math of one element does
  not depend on where the others are. The state is kept per rank (each
  holds its shard, as ``torch.optim.Adam``'s state does) and handed out in
  ``optimizer.state[p]`` as DTensors placed like ``p``
  (:func:`wrap_like`), so ``torch.distributed.checkpoint`` saves it sharded;
- any other chain (a global norm, a matrix product, factored moments) runs
  on the DTensors themselves: DTensor's sharding propagation communicates
  where the math needs the whole tensor.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from expectigrad import _private_torch


def is_distributed(tensor: torch.Tensor) -> bool:
  """Whether ``tensor`` is a DTensor (False where torch has no ``torch.distributed``)."""
  if not torch.distributed.is_available():
    return False
  from torch.distributed.tensor import DTensor  # pylint: disable=import-outside-toplevel
  return isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
  """This rank's shard of a DTensor (a view: writes reach the DTensor); a plain tensor as it is."""
  return tensor.to_local() if is_distributed(tensor) else tensor


def wrap_like(shard: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
  """A DTensor over ``shard`` (this rank's part of a state leaf) placed like DTensor ``param``.

  No communication: every rank wraps its own shard; the global shape and
  stride are ``param``'s, which also covers unevenly sharded dimensions.
  """
  from torch.distributed.tensor import DTensor  # pylint: disable=import-outside-toplevel
  return DTensor.from_local(shard, param.device_mesh, param.placements, run_check=False,
                            shape=param.shape, stride=param.stride())


def place_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
  """A whole state value (the same on every rank) as state of DTensor ``param``.

  Shaped like ``param``: placed like it, each rank keeping its own part (no
  communication). 0-d (a step count): a plain tensor, as in ``torch.optim``.
  Other shapes (factored moments): replicated on ``param``'s mesh.
  """
  from torch.distributed.tensor import Replicate, distribute_tensor  # pylint: disable=import-outside-toplevel
  if is_distributed(value):
    value = value.full_tensor()
  if value.dim() == 0:
    return value
  placements: Sequence = (param.placements if value.shape == param.shape
                          else [Replicate()] * param.device_mesh.ndim)
  return distribute_tensor(value, param.device_mesh, placements, src_data_rank=None)


def replicating():
  """A context in which plain tensors meeting DTensors count as replicated.

  The lowered program makes its constants (a broadcast zero, say) as plain
  tensors, the same on every rank: replicated is what they are.
  """
  return _private_torch.implicit_replication()


def mesh_of(tensor: torch.Tensor) -> Any:
  """A DTensor's device mesh; None for a plain tensor (parameters step per mesh)."""
  return tensor.device_mesh if is_distributed(tensor) else None
