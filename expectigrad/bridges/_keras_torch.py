"""The Keras bridge on ``KERAS_BACKEND=torch``: the torch optimizer's executor, over Keras variables.

The chain is lowered once by the torch bridge's :class:`~._torch_chain.LoweredChain`
for the variables' names, shapes and dtypes, and steps exactly as the torch
optimizer's do, under the same rule (:func:`expectigrad.bridges.torch.runs_in_jax`):

- an elementwise chain keeps its state in flat buffers (the Keras state
  variables hold views of them) and runs each primitive once over them, in
  place (:mod:`._torch_flat`), as Keras's own torch optimizers write in place;
- eagerly on CPU, the traced update runs on the JAX runtime, tensors crossing
  through dlpack (the torch optimizer's CPU default);
- otherwise (inside ``torch.compile``, which Keras's ``jit_compile=True``
  uses; variables without a gradient; a chain that is not elementwise) the
  lowered program runs over the variables and the new values are written.

Writes go through the optimizer's ``assign`` where a subclass or a caller
replaced it (Keras's contract that every write is visible there); with
Keras's own ``assign``, which copies into the variable's tensor, they are
made in place.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import torch

from expectigrad.bridges import _conventions, _torch_flat
from expectigrad.bridges import torch as torch_bridge
from expectigrad.bridges._keras_one_device import device_of, gradient_shape, local  # noqa: F401
from expectigrad.bridges._torch_chain import LoweredChain, as_result

HYPER_NAMES = ('learning_rate',)


def initialising():
  return torch.no_grad()


def _value(variable: Any) -> torch.Tensor:
  return variable.value if isinstance(variable, keras.Variable) else variable


def dense_gradient(gradient: Any, variable: Any) -> torch.Tensor:
  """The dense gradient: a sparse tensor is densified (duplicate indices summed)."""
  del variable
  gradient = torch.as_tensor(gradient)
  return gradient.to_dense() if gradient.is_sparse else gradient


def zeros_like(variable: Any) -> torch.Tensor:
  return torch.zeros_like(_value(variable))


class Chain:
  """The chain lowered to torch for the Keras variables' names, shapes and dtypes."""

  def __init__(self, transform: _conventions.TransformOrFactory, names: Sequence[str],
               shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str]):
    keys = _conventions.unique_keys(list(names))
    make = lambda hyper: _conventions.make_transform(transform, hyper)
    self._lowered = LoweredChain(make, HYPER_NAMES, [tuple(s) for s in shapes],
                                 [getattr(torch, d) for d in dtypes], None, keys=keys)
    self.leaves = _conventions.state_leaves(self._lowered.state_shape, keys)
    self._flat: _torch_flat.Cohort | None = None
    same = len(set(dtypes)) == 1 and bool(shapes)
    flat = _torch_flat.FlatChain(make, HYPER_NAMES, self._lowered,
                                 _torch_flat.Layout([int(torch.Size(s).numel()) for s in shapes]),
                                 getattr(torch, dtypes[0])) if same else None
    self._flat_chain = flat if flat is not None and flat.usable else None
    self._warned: set[str] = set()

  def _place(self, device: torch.device) -> None:
    if self._lowered.device != device:
      self._lowered.place(device)

  def _rate(self, learning_rate: Any, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(_value(learning_rate)).detach().to(
        device=device, dtype=self._lowered.hyper_dtype)

  def init(self, variables: Sequence[Any]) -> list[torch.Tensor]:
    """The initial state; flat (views of one buffer per leaf) for an elementwise chain."""
    values = [_value(v).detach() for v in variables]
    device = values[0].device if values else torch.device('cpu')
    self._place(device)
    with torch.no_grad():
      results = self._lowered.init(self._rate(1.0, device), *values)
      # Fresh storage: the program may return broadcast views of constants.
      state = [as_result(x, getattr(torch, leaf.dtype), device, leaf.shape).clone(
          memory_format=torch.contiguous_format) for x, leaf in zip(results, self.leaves)]
      if self._flat_chain is None:
        return state
      self._flat = _torch_flat.Cohort(self._flat_chain)
      # Keras keeps a torch.nn.Parameter it is given as the variable's tensor,
      # so the variables hold the views themselves.
      return self._flat.adopt(state, values, wrap=lambda t, _: torch.nn.Parameter(
          t, requires_grad=False))

  def step(self, params, state, gradients, learning_rate, frozen, assign, in_place) -> None:
    """One step of the chain over the variables (see the module docstring).

    Args:
      params, state: the Keras variables and the state variables.
      gradients: one dense gradient per variable (zeros where ``frozen``).
      learning_rate: the current learning rate.
      frozen: positions of variables without a gradient (values and state kept).
      assign: the optimizer's ``assign``.
      in_place: whether ``assign`` is Keras's own (writes may be made in place).
    """
    with torch.no_grad():
      values = [_value(v).detach() for v in params]
      device = values[0].device
      self._place(device)
      rate = self._rate(learning_rate, device)
      grads = [g.detach() for g in gradients]
      current = [_value(v).detach() for v in state]
      in_jax = torch_bridge.runs_in_jax(self._lowered, 'auto', self._warned)
      if (self._flat is not None and in_place and not frozen and not in_jax
          and not torch.compiler.is_compiling() and self._flat.intact([_value(v) for v in state])):
        self._flat.step(values, [rate], grads)
        return
      if in_place and not frozen:
        self._lowered.step(values, current, [rate], grads, in_jax=in_jax,
                           foreach=not torch.compiler.is_compiling())
        return
      args = [rate, *grads, *current, *values]
      outputs = self._lowered.run_in_jax(args) if in_jax else self._lowered.update(*args)
      n = len(params)
      updates = [as_result(u, v.dtype, device, v.shape) for u, v in zip(outputs[:n], values)]
      new_state = [as_result(x, getattr(torch, leaf.dtype), device, leaf.shape)
                   for x, leaf in zip(outputs[n:], self.leaves)]
      _conventions.assign_unfrozen(assign, self.leaves, params,
                                   [v + u for v, u in zip(values, updates)], state, new_state,
                                   frozen)
