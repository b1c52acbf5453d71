"""The Keras bridge on ``KERAS_BACKEND=torch``: the chain lowered to torch operations.

The chain's ``init`` and ``update`` are traced once with JAX for the
variables' shapes and dtypes and lowered by :mod:`expectigrad.jax2torch`
(as the torch optimizer does). Where a step runs follows the torch bridge's
``executor='auto'``: on a GPU, and inside ``torch.compile`` (Keras's
``jit_compile=True`` compiles the train step, and Inductor fuses the
update), the lowered torch program runs; eagerly on CPU, where that program
runs one pass over memory per operation, the same traced update runs on the
JAX runtime, the tensors crossing through dlpack (the torch optimizer's CPU
default, for the same reason). The new values are written through the
optimizer's ``assign``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import keras
import torch

from expectigrad import jax2torch
from expectigrad.bridges import _conventions
from expectigrad.bridges._keras_one_device import device_of, gradient_shape, local  # noqa: F401


# What runs eager steps on CPU: 'jax' (the traced update on the JAX runtime,
# as the torch optimizer's CPU default) or 'torch' (the lowered program).
CPU_DEFAULT = 'jax'


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
  """The chain lowered to torch for the Keras variables' names, shapes and dtypes.

  Raises:
    NotImplementedError: if the chain uses a JAX primitive the lowering lacks.
  """

  def __init__(self, transform: _conventions.TransformOrFactory, names: Sequence[str],
               shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str]):
    self._dtypes = list(dtypes)
    self._hyper_dtype = getattr(torch, _conventions.hyper_dtype(dtypes))
    self._device: torch.device | None = None
    with _conventions.x64_scope(self._dtypes):
      hyper = jax.ShapeDtypeStruct((), jnp.dtype(_conventions.hyper_dtype(dtypes)))
      specs = [jax.ShapeDtypeStruct(tuple(s), jnp.dtype(d)) for s, d in zip(shapes, dtypes)]
      self._chain = _conventions.ListChain(transform, _conventions.unique_keys(list(names)), specs)
      state = jax.tree.leaves(self._chain.state_shape)
      self._init = jax2torch.lower(self._chain.init, specs)
      self._update = jax2torch.lower(self._chain.update, specs, specs, state, hyper)
    self._jitted_update = jax.jit(self._chain.update)
    self.leaves = _conventions.named_leaves(self._chain.state_shape, self._chain.keys)
    unsupported = self._init.unsupported | self._update.unsupported
    if unsupported:
      raise NotImplementedError(
          f'this chain uses {sorted(unsupported)}, which the torch lowering lacks; '
          'use it with KERAS_BACKEND=jax or tensorflow.')

  def _place(self, device: torch.device) -> None:
    if self._device != device:
      self._init.place(device)
      self._update.place(device)
      self._device = device

  def _runs_in_jax(self, device: torch.device) -> bool:
    return (device.type == 'cpu' and CPU_DEFAULT == 'jax'
            and not torch.compiler.is_compiling())

  def _run_in_jax(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The traced update on the JAX runtime: zero-copy through dlpack where XLA accepts the buffer."""
    with _conventions.x64_scope(self._dtypes):
      leaves = [jax.dlpack.from_dlpack(a.contiguous()) for a in args]
      params, gradients, state, rate = jax.tree.unflatten(self._update.in_tree, leaves)
      outputs = self._jitted_update(params, gradients, state, rate)
      return [torch.from_dlpack(x) for x in jax.tree.leaves(outputs)]

  def init(self, variables: Sequence[Any]) -> list[torch.Tensor]:
    values = [_value(v).detach() for v in variables]
    device = values[0].device if values else torch.device('cpu')
    self._place(device)
    with torch.no_grad():
      # Fresh storage: the program may return broadcast views of constants.
      return [_as_tensor(x, leaf.shape, leaf.dtype, device).clone(memory_format=torch.contiguous_format)
              for x, leaf in zip(self._init(*values), self.leaves)]

  def step(self, params, state, gradients, learning_rate, frozen, assign) -> None:
    """One step: runs the lowered update on the variables' tensors, writes through ``assign``."""
    with torch.no_grad():
      values = [_value(v).detach() for v in params]
      device = values[0].device
      self._place(device)
      rate = torch.as_tensor(_value(learning_rate)).detach().to(device=device, dtype=self._hyper_dtype)
      args = [*values, *[g.detach() for g in gradients], *[_value(v).detach() for v in state], rate]
      if self._runs_in_jax(device):
        outputs = self._run_in_jax(args)
      else:
        outputs = self._update(*args)
      new_params, new_state = outputs[:len(params)], outputs[len(params):]
      for i, (variable, value) in enumerate(zip(params, new_params)):
        if i not in frozen:
          assign(variable, _as_tensor(value, tuple(variable.shape), None, device))
      for leaf, variable, value in zip(self.leaves, state, new_state):
        if leaf.owner not in frozen:
          assign(variable, _as_tensor(value, leaf.shape, leaf.dtype, device))


def _as_tensor(value: Any, shape: tuple, dtype: str | None, device: torch.device) -> torch.Tensor:
  """A program result (a tensor, or a Python scalar for a constant) as a tensor of ``shape``."""
  tensor = torch.as_tensor(value, device=device)
  if dtype is not None:
    tensor = tensor.to(getattr(torch, dtype))
  return tensor.expand(shape) if tuple(tensor.shape) != tuple(shape) else tensor
