"""The torch optimizer's state: per-parameter dicts of tensors, cohorts, fresh state, checks.

``optimizer.state[p]`` holds one tensor per leaf of the chain's state that
``p`` owns, and every leaf shared by the parameters stepped together (a
step count), by name (``'0.sum_of_squares'``, ``'0.count'``). Parameters
that have always stepped together form a *cohort*: they hold one tensor per
shared leaf, read and written once per step.
"""

from __future__ import annotations

from typing import Any, Mapping, MutableMapping, Sequence

import torch

from expectigrad.bridges import _torch_chain, _torch_dtensor
from expectigrad.bridges._torch_chain import LoweredChain

State = MutableMapping[torch.Tensor, dict]


def as_real(tensor: torch.Tensor) -> torch.Tensor:
  """A complex tensor as its real view (``torch.view_as_real``); a real one as it is.

  Complex parameters are optimized as pairs of real numbers, as
  ``torch.optim`` does: the chain sees, and writes through, the real view,
  and the parameter's state has that view's shape (``p.shape + (2,)``).
  """
  return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def by_kind(positions: Sequence[int], params: Sequence[torch.Tensor]) -> dict[tuple, list[int]]:
  """Positions of ``params`` grouped by device, dtype and DTensor mesh (one lowered program each)."""
  kinds: dict[tuple, list[int]] = {}
  for i in positions:
    p = params[i]
    kinds.setdefault((p.device, p.dtype, _torch_dtensor.mesh_of(p)), []).append(i)
  return kinds


def cohorts_of(state: State, group: Sequence[torch.Tensor], labels: list[int],
               positions: list[int]) -> list[list[int]]:
  """``positions`` (parameters of one group, device and dtype) split into cohorts.

  Shared state (a step count) is one value for all parameters stepped by
  one lowered program. Parameters that stepped on different occasions have
  different counts, so they form different cohorts; a cohort that steps
  only in part is split, and parameters without state form a new one.

  Args:
    state: ``optimizer.state``.
    group: the group's parameters.
    labels: the group's cohort label per parameter position (updated).
    positions: the positions stepping now.

  Returns:
    The positions, one list per cohort.
  """
  by_label: dict[int, list[int]] = {}
  for i in positions:
    by_label.setdefault(labels[i] if len(state[group[i]]) else -1, []).append(i)
  for label, members in by_label.items():
    size = sum(1 for i, other in enumerate(labels) if other == label and len(state[group[i]]))
    if label == -1 or len(members) != size:
      new = max(labels) + 1
      for i in members:
        labels[i] = new
      if label != -1:
        _unshare(state, [group[i] for i in members],
                 [group[i] for i, other in enumerate(labels) if other == label])
  return list(by_label.values())


def _unshare(state: State, leaving: list[torch.Tensor], staying: list[torch.Tensor]) -> None:
  """Gives parameters that leave a cohort their own copy of its shared tensors.

  The members of a cohort hold one tensor per shared leaf (see :func:`share`);
  once their counts can differ, they must not.
  """
  held = {id(t) for p in staying for t in state[p].values()}
  copies: dict[int, torch.Tensor] = {}
  for p in leaving:
    for name, tensor in state[p].items():
      if id(tensor) in held:
        state[p][name] = copies.setdefault(id(tensor), tensor.clone())


def share(state: State, chain: LoweredChain, params: list[torch.Tensor]) -> None:
  """Makes a cohort's members hold one tensor per shared leaf (its step counts).

  One tensor, read and written once per step, rather than a copy per
  parameter: on ResNet-18's 62 tensors the copies took a fifth of
  Inductor's compile time and 13% of the compiled step.
  ``load_state_dict`` and cohort splits give each parameter its own
  tensor; the first member's value is the cohort's.
  """
  for leaf in chain.state:
    if leaf.owner is None:
      first = state[params[0]][leaf.name]
      for p in params[1:]:
        if state[p][leaf.name] is not first:
          state[p][leaf.name] = first


def targets(state: State, chain: LoweredChain, params: list[torch.Tensor]) -> list[torch.Tensor]:
  """The state tensors a step of ``chain`` overwrites, one per leaf (shared ones made one)."""
  share(state, chain, params)
  return [state[params[0 if leaf.owner is None else leaf.owner]][leaf.name]
          for leaf in chain.state]


def init_state(state: State, chain: LoweredChain, hyper: list[torch.Tensor],
               params: list[torch.Tensor], arrays: list[torch.Tensor]) -> None:
  """Fresh state for parameters that never stepped, from the lowered ``init``.

  Args:
    state: ``optimizer.state`` (filled for ``params``).
    chain: the chain lowered for ``arrays``.
    hyper: the traced hyperparameters' tensors.
    params: the parameters.
    arrays: the parameters as the chain sees them (see :func:`as_real`), or,
      for DTensor parameters and an elementwise chain, their local shards
      (``chain`` then is the chain over the shards): the state of a DTensor
      parameter is placed like it (see :mod:`._torch_dtensor`).
  """
  on_shards = _torch_dtensor.is_distributed(params[0]) and not (
      _torch_dtensor.is_distributed(arrays[0]))
  values = chain.init(*hyper, *arrays)
  for p in params:
    state[p] = {}
  for leaf, value in zip(chain.state, values):
    i = 0 if leaf.owner is None else leaf.owner
    p, shape = params[i], _torch_chain.storage_shape(leaf, arrays[i])
    tensor = _torch_chain.as_result(value, leaf.dtype, p.device, leaf.shape).reshape(
        shape).clone(memory_format=torch.contiguous_format)
    if on_shards and leaf.owner is not None:
      tensor = _torch_dtensor.wrap_like(tensor, p)
    elif _torch_dtensor.is_distributed(p) and not on_shards:
      tensor = _torch_dtensor.place_like(tensor, p)
    # A shared leaf (a step count) is one tensor held by every parameter.
    for owner in (params if leaf.owner is None else [p]):
      state[owner][leaf.name] = tensor


def check_param_state(saved_id: Any, tensors: Any, expected: Mapping[str, tuple]) -> None:
  """Raises ValueError unless ``tensors`` has exactly the expected names, shapes, dtypes."""
  if not isinstance(tensors, Mapping) or set(tensors) != set(expected):
    names = sorted(tensors) if isinstance(tensors, Mapping) else type(tensors).__name__
    raise ValueError(f'state of parameter {saved_id!r} must have the entries '
                     f'{sorted(expected)}, got {names}.')
  for name, (shape, dtype) in expected.items():
    value = tensors[name]
    if not isinstance(value, torch.Tensor):
      raise ValueError(f'state[{saved_id!r}][{name!r}] must be a torch.Tensor, '
                       f'got {type(value).__name__}.')
    if tuple(value.shape) != tuple(shape) or value.dtype != dtype:
      raise ValueError(f'state[{saved_id!r}][{name!r}] must have shape {tuple(shape)} and '
                       f'dtype {dtype}, got {tuple(value.shape)} and {value.dtype}.')


def check_saved_groups(saved_groups: Any, n_groups: int, required: set[str],
                       optimizer_name: str) -> None:
  """Checks that a state dict's groups are an optimizer's: as many, with its keys.

  Another optimizer's groups (SGD's, Adam's) lack some of this one's
  hyperparameters; they are named here rather than failing later on the
  first missing key.

  Args:
    saved_groups: the state dict's ``param_groups``.
    n_groups: the optimizer's number of groups.
    required: the keys every group of the optimizer holds.
    optimizer_name: named in the error.

  Raises:
    ValueError: for a different number of groups, a group that is not a
      dict, or one that lacks a required key.
  """
  if not isinstance(saved_groups, Sequence) or len(saved_groups) != n_groups:
    count = len(saved_groups) if isinstance(saved_groups, Sequence) else 'no list of'
    raise ValueError(f'state_dict has {count} param groups, this optimizer has {n_groups}.')
  for index, saved in enumerate(saved_groups):
    missing = sorted(required - set(saved)) if isinstance(saved, Mapping) else ['params']
    if missing:
      raise ValueError(
          f"state_dict's param_groups[{index}] lacks {missing}: is it the state dict of "
          f'another optimizer? {optimizer_name} groups hold {sorted(required)}.')
