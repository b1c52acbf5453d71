"""An optax chain lowered to torch for one list of parameter shapes.

:class:`LoweredChain` traces a chain's ``init`` and ``update`` once with JAX
over abstract parameters (a dict ``{'000000': p0, '000001': p1, ...}``, so
each state leaf's path names its parameter) and lowers both with
:mod:`expectigrad.jax2torch`. It also describes the state: every leaf is
either *owned* by one parameter (sums, counters, momenta: its path holds
that parameter's key) or *shared* by all of them (step counts), and gets a
name from its path without the parameter key (``'0.sum_of_squares'``).

The same traced update can also run on the JAX runtime (:meth:`run_in_jax`),
for chains with a primitive the lowering lacks.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
from jax.extend import core as jax_core
import numpy as np
import optax
import torch

from expectigrad import jax2torch
from expectigrad.bridges import _conventions, _inductor
from expectigrad.bridges._conventions import StateLeaf

MakeTransform = Callable[[dict], optax.GradientTransformation]


def param_key(index: int) -> str:
  """The dict key of the ``index``-th parameter: sorts in index order."""
  return f'{index:06d}'


def x64_scope(dtype: torch.dtype):
  """JAX's 64-bit mode for float64 parameters only (the bridges' one rule, see _conventions)."""
  return _conventions.x64_scope([dtype])


def jax_dtype(dtype: torch.dtype) -> np.dtype:
  """torch dtype -> numpy/JAX dtype; by name, since numpy has no bfloat16 of its own."""
  return jax.numpy.dtype(str(dtype).removeprefix('torch.'))


class LoweredChain:
  """``init`` and ``update`` of a chain, lowered for given parameter shapes.

  Args:
    make: builds the chain from a dict of traced hyperparameters.
    hyper_names: the names of those hyperparameters (sorted).
    shapes: the parameters' shapes.
    dtypes: the parameters' dtypes.
    device: the parameters' device (constants are placed there; None: at
      the first :meth:`place`).
    keys: the dict keys the chain sees the parameters under (default
      :func:`param_key`); the state's leaves are in the order they give.

  Attributes:
    compiled_step: :meth:`step` compiled by Inductor on its first run, from
      flat arguments ``(*params, *targets, *hyper, *grads)``; one opaque op
      inside a caller's ``torch.compile`` (see :mod:`._inductor`).
    n_params: the number of parameters.
    hyper_names: the traced hyperparameters' names, in the programs' order.
    state: one :class:`StateLeaf` per state leaf, in the programs' order.
    state_shape: the optax state's tree of ``jax.ShapeDtypeStruct``.
    traced: ``update`` traced by JAX (a ClosedJaxpr): inputs ``(*hyper,
      *grads, *state, *params)``, outputs ``(*updates, *state)``, flat.
    reads_params: whether ``update`` reads the parameters. It always takes
      them: a chain may require them without reading them
      (``optax.add_decayed_weights(0.0)``).
    unsupported: primitives of ``update`` the lowering lacks.
  """

  def __init__(self, make: MakeTransform, hyper_names: Sequence[str],
               shapes: Sequence[tuple[int, ...]], dtypes: Sequence[torch.dtype],
               device: torch.device | None, keys: Sequence[str] | None = None):
    self.n_params = len(shapes)
    self.hyper_names = tuple(hyper_names)
    keys = list(keys) if keys is not None else [param_key(i) for i in range(self.n_params)]
    params = [jax.ShapeDtypeStruct(tuple(s), jax_dtype(d)) for s, d in zip(shapes, dtypes)]
    # Parameters, gradients and updates are lists in the parameters' order;
    # the chain sees dicts under ``keys`` (whose sorted order orders the state).
    self.chain = _conventions.Chain(lambda **hyper: make(hyper), keys, params, hyper_names)
    self.hyper_dtype = getattr(torch, self.chain.hyper_dtype)
    state = self.state_shape = self.chain.state_shape
    with self.chain.x64():
      hyper = {k: jax.ShapeDtypeStruct((), jax_dtype(self.hyper_dtype)) for k in hyper_names}
      update = self.chain.update_tree
      self.traced = jax.make_jaxpr(update)(hyper, params, state, params)
      self.reads_params = _reads(self.traced, len(params))
      self.init = jax2torch.lower(self.chain.init_tree, hyper, params)
      self.update = jax2torch.lower(update, hyper, params, state, params)
      self._jax_update = jax.jit(update)
    self.device = device
    if device is not None:
      self.place(device)
    self.state = self.chain.state_leaves('.', short=False, dtype=jax2torch.torch_dtype)
    self.unsupported = self.init.unsupported | self.update.unsupported
    n, m, k = self.n_params, len(self.state), len(self.hyper_names)
    self.compiled_step = _inductor.CompiledInPlace(
        lambda *flat: self.step(flat[:n], flat[n:n + m], flat[n + m:n + m + k], flat[n + m + k:],
                                foreach=False),
        n_written=n + m)

  def place(self, device: torch.device) -> None:
    """Places the programs' constants on ``device`` (see ``jax2torch.Program.place``)."""
    self.device = device
    self.init.place(device)
    self.update.place(device)

  def step(self, params: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
           hyper: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], *,
           in_jax: bool = False, foreach: bool = True, per_tensor: bool = False) -> None:
    """One step, in place: the lowered update (or the JAX runtime), written back.

    Args:
      params: the parameters, updated in place.
      targets: the state tensors, one per leaf of :attr:`state` (any shape
        of the leaf's size), overwritten with the new state.
      hyper: the traced hyperparameters, 0-d tensors in :attr:`hyper_names` order.
      grads: the gradients, in the parameters' order.
      in_jax: run the traced update on the JAX runtime (:meth:`run_in_jax`).
      foreach: write the results with one ``torch._foreach_*`` call each
        (eager), or tensor by tensor (for a compiler: Inductor's lowering
        of ``_foreach_copy_`` in torch 2.13 can read a tensor it has already
        overwritten; a compensated sum then came out wrong).
      per_tensor: run the update too one equation at a time, and write
        tensor by tensor (DTensors: torch has no sharding rule for some
        foreach kernels).
    """
    state_in = [t.view(leaf.shape) for t, leaf in zip(targets, self.state)]
    args = [*hyper, *grads, *state_in, *params]
    outputs = self.run_in_jax(args) if in_jax else self.update(*args, foreach=not per_tensor)
    updates, new_state = list(outputs[:len(params)]), outputs[len(params):]
    sources = [as_result(value, leaf.dtype, dst.device, leaf.shape).reshape(dst.shape)
               for dst, value, leaf in zip(targets, new_state, self.state)]
    if foreach and not per_tensor:
      torch._foreach_add_(list(params), updates)
      # One call per pair of dtypes: a list of one dtype stays on ATen's fast route.
      pairs: dict[tuple, tuple[list, list]] = {}
      for target, source in zip(targets, sources):
        group = pairs.setdefault((target.dtype, source.dtype), ([], []))
        group[0].append(target)
        group[1].append(source)
      for group_targets, group_sources in pairs.values():
        torch._foreach_copy_(group_targets, group_sources)
      return
    for param, update in zip(params, updates):
      param.add_(update)
    for target, source in zip(targets, sources):
      target.copy_(source)

  def run_in_jax(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Runs the traced update on the JAX runtime: flat torch args in, flat torch results out.

    Tensors cross through dlpack (zero-copy where XLA accepts the buffer).
    """
    with self.chain.x64():
      leaves = [to_jax(a) for a in args]
      h, g, s, p = jax.tree.unflatten(self.update.in_tree, leaves)
      out = self._jax_update(h, g, s, p)
      return [torch.from_dlpack(x) for x in jax.tree.leaves(out)]


def to_jax(tensor: torch.Tensor) -> jax.Array:
  """A torch tensor as a JAX array through dlpack: zero-copy where XLA can take
  its buffer (JAX copies a misaligned one itself; a strided one is made contiguous)."""
  return jax.dlpack.from_dlpack(tensor.detach().contiguous())


def _reads(closed: Any, n: int) -> bool:
  """Whether the traced program reads any of its last ``n`` inputs (the parameters)."""
  jaxpr = closed.jaxpr
  read = {v for eqn in jaxpr.eqns for v in eqn.invars if isinstance(v, jax_core.Var)}
  read |= {v for v in jaxpr.outvars if isinstance(v, jax_core.Var)}
  return any(v in read for v in jaxpr.invars[len(jaxpr.invars) - n:])


def as_result(value: Any, dtype: torch.dtype | None, device: torch.device,
              shape: Sequence[int] | None = None) -> torch.Tensor:
  """A program result (a tensor, or a Python scalar for a constant) as a tensor.

  A Python float becomes ``dtype`` directly: through torch's default
  float32 a float64 constant such as 0.9 would be rounded. A scalar is
  expanded to ``shape`` (a view: clone it to own the storage).
  """
  tensor = torch.as_tensor(value, dtype=dtype, device=device)
  if shape is not None and tuple(tensor.shape) != tuple(shape):
    tensor = tensor.expand(tuple(shape))
  return tensor


def storage_shape(leaf: StateLeaf, param: torch.Tensor) -> tuple[int, ...]:
  """The shape a state leaf is kept in, in torch: its parameter's, when sizes agree.

  A chain may keep a parameter's per-element state in another layout
  (raveled, say); torch users expect ``optimizer.state[p]`` shaped like ``p``.
  """
  if leaf.owner is not None and leaf.shape != tuple(param.shape) and (
      math.prod(leaf.shape) == param.numel()):
    return tuple(param.shape)
  return leaf.shape
