"""One flat optax state for several torch parameters of the same dtype and device.

XLA on CPU pays a large cost per array, and every torch -> JAX crossing costs
tens of microseconds, so the torch bridge never hands JAX one array per
parameter. A :class:`Bucket` concatenates its parameters' gradients into one
flat buffer (a single zero-copy dlpack import), runs the optax update on that
flat vector, and adds the flat update back to the parameters through views.
The optax state lives in JAX between steps, over the flat vector; only
:meth:`Bucket.export` and :meth:`Bucket.restore` translate it to and from the
usual torch layout (one dict of tensors per parameter).

A state leaf whose shape follows the number of parameters is *elementwise*
(sums, counters, momenta): each parameter owns a slice of it. Every other leaf
(step counters) is shared by the whole bucket, which is why parameters that
step on different occasions end up in different buckets.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch

from expectigrad.bridges._tree_paths import key_name

# XLA imports a buffer zero-copy only if it is aligned to this many bytes.
_DLPACK_ALIGNMENT = 64


class StateLayout(NamedTuple):
  """Where each leaf of the flat optax state comes from.

  Attributes:
    names: one name per leaf, from its path in the state tree ('0.sum_of_squares').
    elementwise: per leaf, whether it holds one value per parameter element.
    dtypes: per leaf, its numpy dtype.
    shared_shapes: per leaf, its shape if it is shared (None if elementwise).
    treedef: the state's tree structure.
  """

  names: tuple[str, ...]
  elementwise: tuple[bool, ...]
  dtypes: tuple[np.dtype, ...]
  shared_shapes: tuple[Any, ...]
  treedef: Any


def to_jax_dtype(dtype: torch.dtype) -> np.dtype:
  """torch dtype -> numpy/JAX dtype; by name, since numpy has no bfloat16 of its own."""
  return jnp.dtype(str(dtype).removeprefix('torch.'))


def to_torch_dtype(dtype: Any) -> torch.dtype:
  """numpy/JAX dtype (bfloat16 included) -> torch dtype."""
  return getattr(torch, np.dtype(dtype).name)


def x64_scope(dtype: torch.dtype):
  """JAX's 64-bit mode for float64 parameters only, leaving the global setting alone."""
  return jax.enable_x64(True) if dtype == torch.float64 else contextlib.nullcontext()


def state_layout(init: Callable[[Any, jax.Array], Any], hyper: dict, dtype: torch.dtype) -> StateLayout:
  """Describes the state ``init`` builds for a flat vector, without computing it.

  A leaf is elementwise if its shape changes with the vector's length, so
  the layout is found by abstract evaluation at two lengths.
  """
  jax_dtype = to_jax_dtype(dtype)
  with x64_scope(dtype):
    shapes = [
        jax.eval_shape(init, hyper, jax.ShapeDtypeStruct((length,), jax_dtype))
        for length in (2, 3)
    ]
  paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes[0])
  other_leaves = jax.tree.leaves(shapes[1])
  elementwise = tuple(a.shape != b.shape for (_, a), b in zip(paths_and_leaves, other_leaves))
  return StateLayout(
      names=tuple('.'.join(map(key_name, path)) for path, _ in paths_and_leaves),
      elementwise=elementwise,
      dtypes=tuple(np.dtype(leaf.dtype) for _, leaf in paths_and_leaves),
      shared_shapes=tuple(
          None if per_element else leaf.shape
          for (_, leaf), per_element in zip(paths_and_leaves, elementwise)
      ),
      treedef=treedef,
  )


def _is_importable(tensor: torch.Tensor) -> bool:
  """Whether ``jax.dlpack.from_dlpack`` can take ``tensor`` without a copy."""
  return tensor.is_contiguous() and tensor.data_ptr() % _DLPACK_ALIGNMENT == 0


class Bucket:
  """Parameters that share one flat optax state and step together.

  Args:
    params: parameters of one dtype and device, in param-group order.
    layout: the :class:`StateLayout` of the transform's state.
    state: the flat optax state (JAX arrays), or None to build it with ``init``.
  """

  def __init__(self, params: Sequence[torch.Tensor], layout: StateLayout, state: Any):
    self.params = list(params)
    self.layout = layout
    self.state = state
    self.shapes = [p.shape for p in self.params]
    self.sizes = [p.numel() for p in self.params]
    self.num_elements = sum(self.sizes)
    self.dtype = self.params[0].dtype
    self.device = self.params[0].device
    self._grad_buffer: torch.Tensor | None = None
    self._param_buffer: torch.Tensor | None = None
    # The previous step's update, donated to the next call so XLA writes into
    # memory it already owns (fresh buffers cost page faults every step).
    self._spare_update: jax.Array | None = None

  def flat_grads(self) -> torch.Tensor:
    """The gradients as one contiguous, 64-byte-aligned vector (no copy for one dense tensor).

    Sparse gradients (``nn.Embedding(sparse=True)``) are densified: ``to_dense``
    sums duplicate indices before anything is squared, and rows the batch did
    not touch get gradient 0, which is the dense update rule's semantics (their
    sum and nonzero count stay put, their momentum decays).
    """
    grads = [p.grad.to_dense() if p.grad.is_sparse else p.grad for p in self.params]
    if len(grads) == 1 and _is_importable(grads[0]):
      return grads[0].view(-1)
    if self._grad_buffer is None:
      self._grad_buffer = torch.empty(self.num_elements, dtype=self.dtype, device=self.device)
    return torch.cat([g.reshape(-1) for g in grads], out=self._grad_buffer)

  def flat_params(self) -> torch.Tensor:
    """The parameters as one contiguous, 64-byte-aligned vector (no copy for one tensor)."""
    if len(self.params) == 1 and _is_importable(self.params[0]):
      return self.params[0].detach().view(-1)
    if self._param_buffer is None:
      self._param_buffer = torch.empty(self.num_elements, dtype=self.dtype, device=self.device)
    return torch.cat([p.detach().reshape(-1) for p in self.params], out=self._param_buffer)

  def step(self, update_fn: Callable, hyper: dict, needs_params: bool) -> None:
    """Runs ``update_fn(hyper, grads, spare, state, params)`` and adds the update in place."""
    grads = jax.dlpack.from_dlpack(self.flat_grads())
    params = jax.dlpack.from_dlpack(self.flat_params()) if needs_params else None
    if self._spare_update is None:
      self._spare_update = jnp.empty(self.num_elements, grads.dtype, device=grads.device)
    updates, self.state = update_fn(hyper, grads, self._spare_update, self.state, params)
    self._spare_update = None
    flat_update = torch.from_dlpack(updates)
    if len(self.params) == 1:
      self.params[0].add_(flat_update.view(self.shapes[0]))
    else:
      views = [u.view(shape) for u, shape in zip(flat_update.split(self.sizes), self.shapes)]
      torch._foreach_add_(self.params, views)  # pylint: disable=protected-access
    # Drop every torch view before keeping the buffer: JAX refuses to donate a
    # buffer that a live dlpack export still references.
    del flat_update
    self._spare_update = updates

  def offsets(self) -> list[int]:
    return [0, *np.cumsum(self.sizes).tolist()]

  def export(self) -> list[dict[str, torch.Tensor]]:
    """Each parameter's state as plain torch tensors (copies, in the parameter's shape)."""
    leaves = jax.tree.leaves(self.state)
    offsets = self.offsets()
    exported = [{} for _ in self.params]
    for name, per_element, leaf in zip(self.layout.names, self.layout.elementwise, leaves):
      tensor = torch.from_dlpack(leaf)
      for i, shape in enumerate(self.shapes):
        value = tensor[offsets[i]:offsets[i + 1]].view(shape) if per_element else tensor
        exported[i][name] = value.clone()
    return exported

  @classmethod
  def restore(
      cls, params: Sequence[torch.Tensor], states: Sequence[dict[str, torch.Tensor]],
      layout: StateLayout,
  ) -> 'Bucket':
    """Rebuilds a bucket from per-parameter tensors that :meth:`export` produced.

    The caller has checked names, shapes and dtypes, and that the shared
    leaves agree across ``states``.
    """
    leaves = []
    with x64_scope(params[0].dtype):
      for name, per_element in zip(layout.names, layout.elementwise):
        if per_element:
          value = torch.cat([state[name].reshape(-1) for state in states])
        else:
          value = states[0][name]
        # A JAX-owned copy: imported buffers are never donated.
        leaves.append(jnp.array(jax.dlpack.from_dlpack(value.detach().contiguous()), copy=True))
    return cls(params, layout, jax.tree.unflatten(layout.treedef, leaves))

  def split(self, keep: Sequence[bool]) -> tuple['Bucket', 'Bucket']:
    """Two buckets, of the parameters where ``keep`` holds and of the others."""
    offsets = self.offsets()
    halves = []
    for wanted in (True, False):
      indices = [i for i, k in enumerate(keep) if k == wanted]
      with x64_scope(self.dtype):
        leaves = [
            jnp.concatenate([leaf[offsets[i]:offsets[i + 1]] for i in indices]) if per_element
            # Each half donates its state at every step, so none may share a buffer.
            else jnp.array(leaf, copy=True)
            for leaf, per_element in zip(jax.tree.leaves(self.state), self.layout.elementwise)
        ]
      halves.append(Bucket([self.params[i] for i in indices], self.layout,
                           jax.tree.unflatten(self.layout.treedef, leaves)))
    return halves[0], halves[1]


def expected_state_shapes(param: torch.Tensor, layout: StateLayout) -> dict[str, tuple[tuple, np.dtype]]:
  """The name -> (shape, dtype) a parameter's exported state must have."""
  return {
      name: (tuple(param.shape) if per_element else tuple(shared), dtype)
      for name, per_element, shared, dtype in zip(
          layout.names, layout.elementwise, layout.shared_shapes, layout.dtypes)
  }

