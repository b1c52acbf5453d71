"""An elementwise chain run by torch over one flat buffer per state leaf.

A torch optimizer over many parameters would otherwise run each primitive
of the lowered update once per tensor (or as a ``torch._foreach_*`` call,
where torch has one: comparisons, casts and selections do not). This
module runs such a chain the way a fused optimizer lays out memory:

- the chain is traced over ONE flat vector holding a cohort's parameters,
  which is the same computation as over the tree of parameters when every
  primitive is elementwise (:func:`is_elementwise`) and the flat state is
  the tree's state concatenated (:func:`corresponds`);
- every per-element state leaf lives in one flat buffer (:class:`Layout`),
  and ``optimizer.state[p]`` holds views of it, shaped like ``p``;
- each step runs the lowered update once over the flat buffers, eagerly,
  in place and freeing intermediates early (:mod:`expectigrad.jax2torch`'s
  ``Program.in_place``): each primitive is one kernel whatever the number
  of tensors; the gradients enter as segments, concatenated where read;
  the flat update is added to the parameters with one ``_foreach_add_``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import torch

from expectigrad import jax2torch
from expectigrad.bridges import _conventions, _torch_chain
from expectigrad.bridges._conventions import StateLeaf


def is_elementwise(jaxpr: Any) -> bool:
  """Whether every equation of ``jaxpr`` (nested calls included) is elementwise."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name in jax2torch.INLINED:  # a nested call: elementwise if its body is
      if not is_elementwise(eqn.params[jax2torch.INLINED[name]]):
        return False
    elif name == 'broadcast_in_dim':
      if eqn.invars[0].aval.ndim != 0:
        return False
    elif name == 'reshape':
      if tuple(eqn.invars[0].aval.shape) != tuple(eqn.outvars[0].aval.shape):
        return False
    elif name not in jax2torch.ELEMENTWISE:
      return False
  return True


def corresponds(tree_leaves: Sequence[StateLeaf], flat_leaves: Sequence[StateLeaf],
                numel: int) -> bool:
  """Whether the flat state holds exactly the tree's state, concatenated.

  Each shared leaf of the tree must be the same shared leaf of the flat
  state; each per-parameter leaf must be, for every parameter, a part of
  one per-element flat leaf of the same name and dtype.
  """
  tree = {(leaf.name, leaf.owner): leaf for leaf in tree_leaves}
  owners = {leaf.owner for leaf in tree_leaves if leaf.owner is not None}
  expected = 0
  for leaf in flat_leaves:
    if leaf.owner is None:
      match = tree.get((leaf.name, None))
      if match is None or match.shape != leaf.shape or match.dtype != leaf.dtype:
        return False
      expected += 1
    else:
      parts = [tree.get((leaf.name, owner)) for owner in owners]
      if len(leaf.shape) != 1 or any(p is None or p.dtype != leaf.dtype for p in parts):
        return False
      if sum(math.prod(p.shape) for p in parts) != numel:
        return False
      expected += len(parts)
  return expected == len(tree_leaves)


class Layout:
  """Where each parameter's elements sit in a flat buffer: one after another.

  Segments are not padded to an alignment: every kernel of a step runs over
  whole flat buffers (aligned), and a view at any offset is a valid input
  to Inductor and to ``torch._foreach_*`` kernels; padding would add to every
  step's transient buffers.

  Args:
    numels: the parameters' element counts.
  """

  def __init__(self, numels: Sequence[int]):
    self.numels = list(numels)
    self.size = sum(self.numels)
    self.packed = len(self.numels) == 1

  def views(self, flat: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """Each parameter's part of ``flat``, in the given shapes.

    One split (unlike slicing, it also works on fake CUDA tensors in a
    CPU-only torch).
    """
    return [piece.view(s) for piece, s in zip(flat.split(self.numels), shapes)]

  @staticmethod
  def segments(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` as the 1-D pieces of a flat vector, concatenated where read."""
    return [t.reshape(-1) for t in tensors]


class FlatChain:
  """A chain traced over one flat vector, and whether that equals running it over the tree.

  Args:
    make: builds the chain from a dict of hyperparameters.
    hyper_names: the traced hyperparameters' names.
    tree: the same chain lowered over the cohort's parameters.
    layout: the cohort's flat layout.
    dtype: the parameters' dtype.

  Attributes:
    usable: whether the flat chain is elementwise and its state is the tree's.
    leaves: the flat state's leaves (per-element ones span the whole layout).
    closed: the update over flat vectors traced (a ClosedJaxpr); ``in_tree``
      and ``out_tree`` its argument and result structures.
  """

  def __init__(self, make: Callable, hyper_names: Sequence[str],
               tree: _torch_chain.LoweredChain, layout: Layout, dtype: torch.dtype):
    self.dtype, self.tree, self.layout = dtype, tree, layout
    self.hyper_names = tuple(hyper_names)
    key = _torch_chain.param_key(0)

    def init(hyper, params):
      return make(hyper).init({key: params})

    def update(hyper, grads, state, params):
      updates, state = make(hyper).update(
          {key: grads}, state, None if params is None else {key: params})
      return updates[key], state

    with _torch_chain.x64_scope(dtype):
      hyper = {k: jax.ShapeDtypeStruct((), _torch_chain.jax_dtype(tree.hyper_dtype))
               for k in hyper_names}
      vector = jax.ShapeDtypeStruct((layout.size,), _torch_chain.jax_dtype(dtype))
      state = jax.eval_shape(init, hyper, vector)
      self.closed, out_shape = jax.make_jaxpr(update, return_shape=True)(
          hyper, vector, state, vector)
    self.in_tree = jax.tree.structure((hyper, vector, state, vector))
    self.out_tree = jax.tree.structure(out_shape)
    self.leaves = _conventions.state_leaves(state, [key], '.', False, jax2torch.torch_dtype)
    self.usable = corresponds(tree.state, self.leaves, sum(layout.numels)) and (
        is_elementwise(self.closed))
    self._runs: dict[tuple, Callable[..., list]] = {}

  def runner(self, device: torch.device, packed_grads: bool) -> Callable[..., list]:
    """The update lowered to torch and planned in place: state donated and written back.

    Arguments ``(*hyper, grads, *state, params)``; ``params`` are segments
    (:meth:`Layout.segments`), ``grads`` too unless ``packed_grads``.
    """
    key = (device, packed_grads)
    if key not in self._runs:
      program = jax2torch.Program(self.closed, self.in_tree, self.out_tree)
      program.place(device)
      k, m = len(self.hyper_names), len(self.leaves)
      state = range(k + 1, k + 1 + m)
      segmented = ([] if packed_grads else [k]) + [k + 1 + m]
      self._runs[key] = program.in_place(donated=state,
                                         aliases={1 + i: s for i, s in enumerate(state)},
                                         segmented=segmented)
    return self._runs[key]


class Cohort:
  """A cohort's state in flat torch buffers, handed out as views, and its in-place step.

  The state is exchanged with the caller as a list of tensors in the order
  of the tree's state leaves (``chain.tree.state``): per-parameter leaves
  as views of one flat buffer each, shared leaves (step counts) as they are.

  Args:
    chain: the :class:`FlatChain` of the cohort's parameters.
  """

  def __init__(self, chain: FlatChain):
    self.chain = chain
    self._buffers: list[torch.Tensor] = []  # one per flat leaf
    self._handed_out: list[torch.Tensor] = []  # in tree order

  def intact(self, tensors: Sequence[torch.Tensor]) -> bool:
    """Whether ``tensors`` are still the ones this cohort handed out."""
    return len(tensors) == len(self._handed_out) and all(
        a is b for a, b in zip(tensors, self._handed_out))

  def adopt(self, tensors: Sequence[torch.Tensor], arrays: Sequence[torch.Tensor],
            wrap: Callable[[torch.Tensor, int | None], torch.Tensor] | None = None
            ) -> list[torch.Tensor]:
    """Copies the state ``tensors`` into new flat buffers; returns what to keep instead.

    Args:
      tensors: the current state, in tree order.
      arrays: the parameters as the chain sees them (real views of complex ones).
      wrap: applied to each view, with the position of the parameter it
        belongs to (None for a shared leaf), before it is handed out (None:
        the views themselves).

    Returns:
      The views, and the shared leaves' tensors, each wrapped, in tree order.
    """
    layout, tree = self.chain.layout, self.chain.tree.state
    wrap = wrap or (lambda tensor, owner: tensor)
    position = {(leaf.name, leaf.owner): k for k, leaf in enumerate(tree)}
    handed = list(tensors)
    self._buffers = []
    for leaf in self.chain.leaves:
      if leaf.owner is None:
        k = position[leaf.name, None]
        handed[k] = wrap(tensors[k], None)
        self._buffers.append(handed[k])
        continue
      flat = torch.zeros(layout.size, dtype=leaf.dtype, device=arrays[0].device)
      where = [position[leaf.name, i] for i in range(len(arrays))]
      parts = layout.views(flat, [tuple(tensors[k].shape) for k in where])
      torch._foreach_copy_(parts, [tensors[k] for k in where])
      for i, (k, part) in enumerate(zip(where, parts)):
        handed[k] = wrap(part, i)
      self._buffers.append(flat)
    self._handed_out = handed
    return list(handed)

  def step(self, arrays: Sequence[torch.Tensor], hyper: Sequence[torch.Tensor],
           grads: Sequence[torch.Tensor]) -> None:
    """One in-place update of the parameters and of the flat state (adopted before)."""
    layout = self.chain.layout
    run = self.chain.runner(arrays[0].device, layout.packed)
    flat_grads = grads[0].reshape(-1) if layout.packed else layout.segments(grads)
    # The parameters enter as segments, concatenated where read; a chain that
    # never reads them gets none.
    params = layout.segments(arrays) if self.chain.tree.reads_params else []
    update = run(*hyper, flat_grads, *self._buffers, params)[0]
    if layout.packed:
      arrays[0].add_(update.view(arrays[0].shape))
    else:
      torch._foreach_add_(list(arrays), layout.views(update, [a.shape for a in arrays]))
