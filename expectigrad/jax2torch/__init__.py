"""A compiler from JAX programs to torch programs (a jax2tf for torch).

:func:`lower` traces a JAX function once with ``jax.make_jaxpr`` for
abstract arguments, and returns a :class:`Program`: the same computation as
torch operations, which runs on torch tensors on any device, eagerly or
under ``torch.compile``, without calling JAX. It knows nothing of the
functions it lowers; it is a table of primitives (:mod:`._primitives`) and
an interpreter (:mod:`._program`), plus two schedules: one that runs
equations repeated over many tensors as single ``torch._foreach_*`` calls
(:mod:`._foreach`), and one that runs programs over a few large tensors in
little memory, in place (:mod:`._inplace`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import torch

from expectigrad.jax2torch import _foreach, _graph, _inplace, _program
from expectigrad.jax2torch._primitives import ELEMENTWISE, PRIMITIVES, torch_dtype
from expectigrad.jax2torch._program import INLINED

__all__ = ['ELEMENTWISE', 'INLINED', 'PRIMITIVES', 'Program', 'lower', 'torch_dtype']


class Program:
  """A lowered JAX function: flat torch tensors in, flat torch tensors out.

  Attributes:
    in_tree, out_tree: the JAX pytree structures of the arguments and results
      (flatten and unflatten outside a compiled region: JAX is not called here).
    unsupported: names of the primitives the table lacks; calling a program
      with any raises ``NotImplementedError``.
  """

  def __init__(self, closed_jaxpr: Any, in_tree: Any, out_tree: Any):
    self._graph = _program.build(closed_jaxpr)
    self._steps = _foreach.schedule(self._graph)
    self._constants: dict[torch.device, dict[int, torch.Tensor]] = {}
    self.in_tree, self.out_tree = in_tree, out_tree
    self.unsupported = self._graph.unsupported

  @property
  def primitives(self) -> frozenset[str]:
    """The primitives this program runs (nested ``cond`` branches excluded)."""
    return frozenset(op.primitive for op in self._graph.ops)

  def place(self, device: torch.device) -> None:
    """Moves the program's constants to ``device`` once, rather than at every call.

    Call it outside ``torch.compile`` for every device the program will run
    on, so a compiled caller does not see the cache change (and recompile).
    """
    if device not in self._constants:
      self._constants[device] = self._constants_on(device)

  def _constants_on(self, device: torch.device) -> dict[int, torch.Tensor]:
    """The constants on ``device``: placed ones, else moved for this call only."""
    if device in self._constants:
      return self._constants[device]
    return {slot: value.to(device) for slot, value in self._graph.constants.items()}

  def __call__(self, *args: Any, foreach: bool = True) -> list[Any]:
    """Runs the program.

    Args:
      *args: one torch tensor (or Python scalar) per flat argument, all on
        one device.
      foreach: batch repeated equations into ``torch._foreach_*`` calls
        (True), or run one equation at a time.

    Returns:
      The flat results, as torch tensors (Python scalars for constant results).
    """
    device = next((a.device for a in args if isinstance(a, torch.Tensor)),
                  torch.device('cpu'))
    constants = self._constants_on(device)
    if foreach:
      return _foreach.run(self._graph, self._steps, args, constants)
    return _graph.run(self._graph, args, constants)

  def in_place(self, donated: Sequence[int] = (), aliases: Mapping[int, int] | None = None,
               segmented: Sequence[int] = ()) -> Callable[..., list[Any]]:
    """The program as an eager function that frees and overwrites buffers (see :mod:`._inplace`).

    Args:
      donated: positions of arguments the function may overwrite.
      aliases: ``{result index: argument index}``: that result is written
        into that (donated) argument, which is returned for it.
      segmented: positions of 1-D arguments passed as lists of 1-D tensors
        (their concatenation).

    Returns:
      ``f(*args) -> results``, the arguments on one device.
    """
    schedule = _inplace.plan(self._graph, donated, aliases, segmented)

    def run(*args: Any) -> list[Any]:
      first = next(a for a in args if isinstance(a, torch.Tensor) or isinstance(a, list))
      device = (first[0] if isinstance(first, list) else first).device
      return schedule(args, self._constants_on(device))
    return run


def lower(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Program:
  """Traces ``fn`` once and lowers it to torch.

  Args:
    fn: a JAX-traceable function.
    *args: example arguments: pytrees of arrays or ``jax.ShapeDtypeStruct``.
    **kwargs: static keyword arguments for ``fn``.

  Returns:
    A :class:`Program` taking the flattened ``args``.
  """
  flat, in_tree = jax.tree.flatten(args)
  closed, out_shape = jax.make_jaxpr(
      lambda *leaves: fn(*jax.tree.unflatten(in_tree, leaves), **kwargs),
      return_shape=True)(*flat)
  return Program(closed, in_tree, jax.tree.structure(out_shape))
