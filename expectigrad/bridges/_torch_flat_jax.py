"""The JAX executor: an elementwise chain, run by XLA over one flat vector.

On a CPU, XLA compiles an elementwise optax update into a few vectorised
loops, which run faster than torch's eager foreach kernels (one pass per
primitive) and need no ``torch.compile``. This module runs a chain that way
for a cohort of torch parameters:

- The chain is traced over ONE flat vector holding all the cohort's
  parameters. That is the same computation as over the tree of parameters
  only if every primitive is elementwise (:func:`is_elementwise`); chains
  with reductions (global norms), factored statistics or control flow are
  not run here.
- The state lives in JAX-owned flat buffers, and ``optimizer.state[p]``
  holds torch views of them (``torch.from_dlpack``, zero-copy), shaped like
  ``p``. Before each call the views are taken out of ``optimizer.state`` so
  XLA may update the buffers in place (JAX never donates a buffer that a
  live dlpack export references); new views are put back after it.
- One JAX-owned buffer beyond the state holds the update: XLA writes it
  there (donated), and it is added to the parameters through views, in
  place. The gradients are read where they are (one dense tensor) or packed
  into that same buffer, which XLA then overwrites with the update. Without
  it each step's update would be a fresh allocation: on the 2-core CPU
  machine that doubled the step (W1 35-41 -> 72-77 ms: page faults on 64 MB).

If ``optimizer.state[p]`` no longer holds the views this module put there
(``load_state_dict``, a user's assignment), the state is re-imported from
it.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import torch

from expectigrad.bridges import _torch_chain, _torch_flat

# XLA imports a buffer zero-copy only if it is aligned to this many bytes.
_DLPACK_ALIGNMENT = 64


def _is_importable(tensor: torch.Tensor) -> bool:
  """Whether ``jax.dlpack.from_dlpack`` can take ``tensor`` without a copy."""
  return tensor.is_contiguous() and tensor.data_ptr() % _DLPACK_ALIGNMENT == 0


class FlatChain:
  """A chain traced over one flat vector (:class:`._torch_flat.FlatChain`), jitted for XLA.

  Args:
    flat: the traced chain; the JAX executor runs it only if ``flat.usable``.

  Attributes:
    usable: whether the flat chain is elementwise and its state matches the tree's.
    leaves: the flat state's leaves (one per name; per-element ones span all parameters).
  """

  def __init__(self, flat: _torch_flat.FlatChain):
    self.dtype, self.tree, self.size = flat.dtype, flat.tree, flat.layout.size
    self.hyper_names, self.leaves, self.usable = flat.hyper_names, flat.leaves, flat.usable
    self._layout = flat.layout
    self._hyper_dtype = _torch_chain.jax_dtype(flat.tree.hyper_dtype)
    self._tree_leaf = flat.tree_leaf
    self._treedef = flat.state_tree

    def update(hyper, grads, spare, state, params):
      del spare
      # A chain that does not read the parameters gets the gradients in their
      # place (it may still require an array: optax.add_decayed_weights(0.0)).
      return flat.update(hyper, grads, state, grads if params is None else params)

    # JAX pairs donated inputs with outputs of the same shape in argument order:
    # XLA writes the update into ``spare`` (last step's update buffer) or, where
    # the gradients were packed into that buffer, into ``grads``; each state
    # leaf into its own buffer.
    jit = functools.partial(jax.jit, keep_unused=True)
    self._update_into = {'spare': jit(update, donate_argnums=(2, 3)),
                         'grads': jit(update, donate_argnums=(1, 3))}

  def hyper(self, traced: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as JAX scalars (a tensor's value is read: this runs on CPU only)."""
    return {k: jnp.asarray(float(traced[k]), self._hyper_dtype) for k in self.hyper_names}

  def state_from_torch(self, params: Sequence[torch.Tensor], state: dict) -> Any:
    """A JAX-owned flat state built from ``optimizer.state`` (copies)."""
    leaves = []
    for leaf in self.leaves:
      if leaf.owner is None:
        value = state[params[0]][leaf.name].reshape(leaf.shape)
      else:
        value = torch.cat([state[p][leaf.name].reshape(-1) for p in params])
      # A JAX-owned copy: XLA never donates a buffer imported from torch.
      leaves.append(jnp.array(jax.dlpack.from_dlpack(value.detach().contiguous()), copy=True))
    return jax.tree.unflatten(self._treedef, leaves)

  def views(self, params: Sequence[torch.Tensor], state: Any) -> list[dict[str, torch.Tensor]]:
    """Per parameter, torch views of the flat JAX state, shaped as ``optimizer.state`` keeps them."""
    views: list[dict[str, torch.Tensor]] = [{} for _ in params]
    for leaf, value in zip(self.leaves, jax.tree.leaves(state)):
      tensor = torch.from_dlpack(value)
      if leaf.owner is None:  # one tensor, held by every parameter (as the torch path does)
        shared = tensor.view(self._tree_leaf[leaf.name, None].shape)
        for view in views:
          view[leaf.name] = shared
        continue
      shapes = [_torch_chain.storage_shape(self._tree_leaf[leaf.name, i], p)
                for i, p in enumerate(params)]
      for view, piece in zip(views, self._layout.views(tensor, shapes)):
        view[leaf.name] = piece
    return views

  def run(self, hyper: dict, grads: Any, spare: Any, state: Any, params: torch.Tensor | None
          ) -> tuple[Any, Any]:
    """One jitted update; returns the flat update and the new state (JAX arrays).

    Args:
      hyper: from :meth:`hyper`.
      grads: the flat gradients (a JAX array); donated, and overwritten with
        the update, when ``spare`` is None.
      spare: a JAX-owned buffer for the update (donated), or None.
      state: the flat state (donated).
      params: the flat parameters, for chains that read them.
    """
    with warnings.catch_warnings():
      # A state tensor the user still holds cannot be donated; XLA then copies.
      warnings.filterwarnings('ignore', message='Some donated buffers were not usable')
      return self._update_into['grads' if spare is None else 'spare'](
          hyper, grads, spare, state, None if params is None else jax.dlpack.from_dlpack(params))


class Cohort:
  """The flat JAX state of parameters that step together, and the views handed out.

  Args:
    chain: the :class:`FlatChain` for these parameters.
    params: the parameters, in order.
  """

  def __init__(self, chain: FlatChain, params: Sequence[torch.Tensor]):
    self.chain = chain
    self.params = list(params)
    self.state: Any = None
    self._views: list[dict[str, torch.Tensor]] = []
    self._spare: Any = None
    self._param_buffer: torch.Tensor | None = None

  def _flat(self, tensors: Sequence[torch.Tensor], buffer_name: str) -> torch.Tensor:
    """``tensors`` as one aligned vector (no copy for one importable tensor)."""
    if len(tensors) == 1 and _is_importable(tensors[0]):
      return tensors[0].detach().view(-1)
    buffer = getattr(self, buffer_name)
    if buffer is None:
      buffer = torch.empty(self.chain.size, dtype=self.chain.dtype)
      setattr(self, buffer_name, buffer)
    return torch.cat([t.detach().reshape(-1) for t in tensors], out=buffer)

  def step(self, state: dict, traced: dict[str, Any], grads: Sequence[torch.Tensor]) -> None:
    """One update of the cohort's parameters and of ``state`` (``optimizer.state``)."""
    with _torch_chain.x64_scope(self.chain.dtype):
      self._step(state, traced, grads)

  def _step(self, state: dict, traced: dict[str, Any], grads: Sequence[torch.Tensor]) -> None:
    names = [leaf.name for leaf in self.chain.leaves]
    intact = self.state is not None and all(
        state[p].get(name) is view[name]
        for p, view in zip(self.params, self._views) for name in names)
    if not intact:
      self.state = self.chain.state_from_torch(self.params, state)
    # Drop every view of the state before the call, so XLA may reuse it.
    self._views = []
    for p in self.params:
      state[p].clear()
    flat_params = self._flat(self.params, '_param_buffer') if self.chain.tree.reads_params else None
    if self._spare is None:
      self._spare = jnp.empty(self.chain.size, _torch_chain.jax_dtype(self.chain.dtype))
    if len(grads) == 1 and _is_importable(grads[0]):
      flat_grads = jax.dlpack.from_dlpack(grads[0].detach().view(-1))
    else:
      # Packed into the spare itself, which XLA then overwrites with the update:
      # one buffer beyond the state, not two.
      packed = torch.from_dlpack(self._spare)
      torch.cat([g.detach().reshape(-1) for g in grads], out=packed)
      del packed  # a live view would keep XLA from reusing the buffer
      flat_grads, self._spare = self._spare, None
    updates, self.state = self.chain.run(
        self.chain.hyper(traced), flat_grads, self._spare, self.state, flat_params)
    self._spare = None
    updates.block_until_ready()
    flat_update = torch.from_dlpack(updates)
    pieces = flat_update.split([p.numel() for p in self.params])
    torch._foreach_add_(self.params, [u.view(p.shape) for u, p in zip(pieces, self.params)])
    del flat_update, pieces  # no torch view may outlive this step: the buffer is donated next
    self._spare = updates
    self._views = self.chain.views(self.params, self.state)
    for p, view in zip(self.params, self._views):
      state[p].update(view)
