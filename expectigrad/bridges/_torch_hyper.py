"""A torch param group's hyperparameters, as the chain's factory takes them.

Group keys use torch's names (``lr``); the factory takes optax's
(``learning_rate``). Real floating-point numbers and 0-d tensors are
*traced*: they enter the lowered step as 0-d tensors, so LR schedulers and
group edits never re-trace. Everything else (``sparse_counter``) is a
*static* trace-time constant, part of the key of a lowered chain.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import numpy as np
import optax
import torch

# torch's names for hyperparameters -> the factory's keyword names. Keys not
# listed are passed under their own name (beta, eps, sparse_counter, ...).
TORCH_TO_OPTAX_NAMES: Mapping[str, str] = {'lr': 'learning_rate'}
# Group keys the bridge itself reads; never passed to the factory.
BRIDGE_KEYS = frozenset({'params', 'maximize'})


def torch_name(name: str) -> str:
  """The group key of the factory's keyword ``name``."""
  return {v: k for k, v in TORCH_TO_OPTAX_NAMES.items()}.get(name, name)


def accepted_names(transform: Any, defaults: Mapping[str, Any]) -> frozenset[str]:
  """The factory's keyword names a group may set; other group keys are ignored.

  Groups also carry keys that are not hyperparameters of the transform
  (``initial_lr`` from LR schedulers, user annotations).
  """
  if isinstance(transform, optax.GradientTransformation):
    return frozenset()
  names = {TORCH_TO_OPTAX_NAMES.get(k, k) for k in defaults}
  try:
    parameters = inspect.signature(transform).parameters.values()
  except (TypeError, ValueError):  # no signature (some builtins): the defaults only
    return frozenset(names)
  return frozenset(names | {p.name for p in parameters if p.kind in (
      inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)})


def number(value: Any) -> Any:
  """A numpy floating scalar or 0-d array as a Python float; anything else as it is."""
  if isinstance(value, (np.floating, np.ndarray)) and np.ndim(value) == 0 and (
      np.asarray(value).dtype.kind == 'f'):
    return float(value)
  return value


def is_traced(value: Any) -> bool:
  """Real floating-point numbers enter the lowered step as 0-d tensors (edits never re-trace)."""
  if isinstance(value, torch.Tensor):
    return value.ndim == 0 and value.is_floating_point()
  return isinstance(value, float)


def is_hashable(value: Any) -> bool:
  """Whether a static value can key a lowered chain (tuples and frozensets: each item)."""
  if isinstance(value, (tuple, frozenset)):
    return all(is_hashable(item) for item in value)
  return getattr(type(value), '__hash__', None) is not None


class HyperTensors:
  """Traced hyperparameters as 0-d tensors, cached per name, device and dtype.

  A tensor is used as it is (converted if needed). A number gets a cached
  tensor, refilled when the number changes, so eager steps copy nothing to
  the device while it stays the same. Inside ``torch.compile`` a number is
  a constant of the graph, as for ``torch.optim``: pass 0-d tensors to
  change values without recompiling.
  """

  def __init__(self):
    self._cached: dict[tuple, tuple[torch.Tensor, float]] = {}

  def get(self, name: str, value: Any, device: torch.device, dtype: torch.dtype
          ) -> torch.Tensor:
    """``value`` as a 0-d tensor on ``device``."""
    if isinstance(value, torch.Tensor):
      return value.to(device=device, dtype=dtype)
    if torch.compiler.is_dynamo_compiling():
      return torch.full((), float(value), dtype=dtype, device=device)
    key = (name, device, dtype)
    cached = self._cached.get(key)
    if cached is None or cached[1] != float(value):
      if cached is None:
        cached = (torch.empty((), dtype=dtype, device=device), None)
      cached[0].fill_(float(value))
      cached = self._cached[key] = (cached[0], float(value))
    return cached[0]
