"""Runs a :class:`~._graph.Graph` with one ``torch._foreach_*`` call per batch.

An optax update traced over a tree of parameters repeats the same equations
once per leaf (``jax.tree.map``). This module groups them back: operations
at the same dependency depth, with the same primitive and parameters, form a
batch, and a batch whose operands fit one of torch's foreach kernels runs as
that single call over all leaves (one pass per primitive, however many
tensors). Everything else runs one operation at a time.

Every foreach form used here computes exactly what the single operation
computes, element for element (``s - x`` as ``(-x) + s``), so both paths
give bit-identical results.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import math

import torch

from expectigrad import _private_torch
from expectigrad.jax2torch._primitives import ELEMENTWISE
from expectigrad.jax2torch._graph import Graph, Literal, Op

Slots = dict
Step = Callable[[Slots], None]

_UNARY = {
    'neg': torch._foreach_neg, 'sqrt': torch._foreach_sqrt, 'rsqrt': torch._foreach_rsqrt,
    'abs': torch._foreach_abs, 'exp': torch._foreach_exp,
    'log': torch._foreach_log, 'log1p': torch._foreach_log1p, 'expm1': torch._foreach_expm1,
    'cos': torch._foreach_cos, 'sin': torch._foreach_sin, 'tanh': torch._foreach_tanh,
    'logistic': torch._foreach_sigmoid, 'erf': torch._foreach_erf,
    'floor': torch._foreach_floor, 'ceil': torch._foreach_ceil,
}
_LIST_LIST = {
    'add': torch._foreach_add, 'sub': torch._foreach_sub, 'mul': torch._foreach_mul,
    'div': torch._foreach_div, 'max': torch._foreach_maximum, 'min': torch._foreach_minimum,
    'pow': torch._foreach_pow,
}
_COMMUTATIVE = frozenset({'add', 'mul', 'max', 'min'})
# No foreach kernel matches XLA here: ``sign`` of NaN and -0.0, and the
# ordering of -0.0 below +0.0 in floating-point ``max``/``min`` (see
# ``_primitives``); those run one operation at a time.
_FLOAT_SINGLE = frozenset({'max', 'min'})
# list (op) scalar literal: every _LIST_LIST kernel has a Scalar overload.
# list (op) shared 0-d tensor: these take it as one tensor. ``add`` and
# ``sub`` run flat instead (see _batched): their Tensor overload reads the
# value on the host (``.item()``), and a list of the tensor repeated leaves
# ATen's fast route (one kernel per tensor).
_TENSOR_OVERLOAD = frozenset({'mul', 'div'})


def _params_key(op: Op) -> str:
  return repr(sorted(op.params.items()))


# Ops that only relabel memory (views in torch). They add no depth, so a leaf
# whose state is kept in another layout (a reshape on its path) still lines
# up with the other leaves; they run after the batches of their level.
_VIEWS = frozenset({'reshape', 'broadcast_in_dim', 'squeeze', 'transpose'})


def _levels(graph: Graph) -> list[int]:
  """Each op's dependency depth: 1 + the deepest op producing one of its inputs."""
  depth: dict[int, int] = {}
  levels = []
  for op in graph.ops:
    deepest = max((depth.get(r, 0) for r in op.inputs if not isinstance(r, Literal)),
                  default=0)
    level = deepest if op.primitive in _VIEWS else deepest + 1
    for slot in op.outputs:
      depth[slot] = level
    levels.append(level)
  return levels


def _read(slots: Slots, ref: Any) -> Any:
  return ref.value if isinstance(ref, Literal) else slots[ref]


def _single(op: Op) -> Step:
  def step(slots: Slots) -> None:
    for slot, value in zip(op.outputs, op.fn(*(_read(slots, r) for r in op.inputs))):
      slots[slot] = value
  return step


def _write(outputs: list[int]) -> Callable[[Slots, Sequence[torch.Tensor]], None]:
  def write(slots: Slots, values: Sequence[torch.Tensor]) -> None:
    for slot, value in zip(outputs, values):
      slots[slot] = value
  return write


def _batched(graph: Graph, batch: list[Op], broadcasts: dict[int, Any]) -> Step | None:
  """One call for ``batch``: over flat buffers when its operands tile them, else foreach.

  An elementwise batch whose list operands are consecutive views of one
  flat buffer (the pieces of an earlier flat result, or of flat state) runs
  as one kernel over that buffer, whatever the primitive; otherwise as one
  ``torch._foreach_*`` call where torch has one, and else over operands
  concatenated for the call. Either way, one kernel per primitive. Under a
  compiler, the foreach call or the ops one by one: it fuses them into its
  loops, where a concatenation would be materialised. A batch of one op is
  not batched (None). ``broadcasts`` maps slots that broadcast a 0-d value to
  that value.
  """
  if len(batch) == 1:
    return None
  foreach = _foreach_batched(graph, batch)
  flat = _flat_batched(graph, batch, broadcasts)
  if flat is None:
    return foreach
  flat_step, tiled = flat
  each = foreach if foreach is not None else _each(batch)

  def step(slots: Slots) -> None:
    if _tracing():
      # A compiler fuses the per-tensor ops into its loops; a concatenation
      # would be materialised (W1 compiled: 3x slower).
      each(slots)
    elif tiled(slots) or foreach is None:
      flat_step(slots)
    else:
      foreach(slots)
  return step


def _each(batch: list[Op]) -> Step:
  """The ops of ``batch`` one at a time."""
  singles = [_single(op) for op in batch]

  def step(slots: Slots) -> None:
    for single in singles:
      single(slots)
  return step


def _tracing() -> bool:
  """Whether a compiler traces this call (Dynamo, or make_fx for Inductor).

  Traced code must not read through a view to its base: the base of an
  input view is not an input of the traced function. A compiler fuses the
  foreach call anyway.
  """
  return _private_torch.is_tracing()


def _flat_batched(graph: Graph, batch: list[Op], broadcasts: dict[int, Any]
                  ) -> tuple[Step, Callable[[Slots], bool]] | None:
  """``(step, whether the list operands already tile flat buffers)`` for an elementwise batch.

  An operand that every op of the batch reads as the same 0-d value (or a
  broadcast of it) enters the flat call as that value.
  """
  if len(batch) < 2 or batch[0].primitive not in ELEMENTWISE or len(batch[0].outputs) != 1:
    return None
  avals = graph.avals
  shapes = [avals[op.outputs[0]].shape for op in batch]
  numels = [math.prod(shape) for shape in shapes]
  operands: list[tuple[bool, Any]] = []  # (is a list, refs or the shared ref)
  for position in range(len(batch[0].inputs)):
    refs = [op.inputs[position] for op in batch]
    sources = {broadcasts.get(r, r) if not isinstance(r, Literal) else r for r in refs}
    if len(sources) == 1:
      (source,) = sources
      if isinstance(source, Literal) or avals[source].shape == ():
        operands.append((False, source))
        continue
    if all(not isinstance(r, Literal) and avals[r].shape == s for r, s in zip(refs, shapes)):
      operands.append((True, refs))
    else:
      return None
  lists = [refs for is_list, refs in operands if is_list]
  if not lists:
    return None
  fn = batch[0].fn
  write = _write([op.outputs[0] for op in batch])

  def step(slots: Slots) -> None:
    values = [_flat([slots[r] for r in x]) if is_list else _read(slots, x) for is_list, x in operands]
    (result,) = fn(*values)
    write(slots, [piece.view(s) for piece, s in zip(result.split(numels), shapes)])

  def tiled(slots: Slots) -> bool:
    return all(_tiling([slots[r] for r in refs]) is not None for refs in lists)
  return step, tiled


def _tiling(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
  """The 1-D buffer ``tensors`` are consecutive contiguous views of, covering it, or None."""
  base = _private_torch.view_base(tensors[0])
  if base is None or base.dim() != 1 or not base.is_contiguous():
    return None
  offset = base.storage_offset()
  for t in tensors:
    if (_private_torch.view_base(t) is not base or not t.is_contiguous()
        or t.storage_offset() != offset):
      return None
    offset += t.numel()
  return base if offset == base.storage_offset() + base.numel() else None


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
  """``tensors`` as one flat vector: the buffer they tile, else their concatenation."""
  base = None if _tracing() else _tiling(tensors)
  return base if base is not None else torch.cat([t.reshape(-1) for t in tensors])


def _foreach_batched(graph: Graph, batch: list[Op]) -> Step | None:
  """One foreach call for ``batch``, or None if its operands do not fit one."""
  name = batch[0].primitive
  avals = graph.avals
  out_shapes = [avals[op.outputs[0]].shape for op in batch]
  dtype = avals[batch[0].outputs[0]].dtype
  if len(batch) < 2 or (name == 'div' and not dtype.is_floating_point):
    return None
  if name in _FLOAT_SINGLE and dtype.is_floating_point:
    return None
  write = _write([op.outputs[0] for op in batch])

  def is_full_list(position: int) -> bool:
    refs = [op.inputs[position] for op in batch]
    return (len(set(refs)) == len(refs) and not any(isinstance(r, Literal) for r in refs)
            and all(avals[r].shape == s for r, s in zip(refs, out_shapes)))

  def shared(position: int) -> Any:
    """The literal or 0-d slot all ops share at ``position``, else None."""
    refs = {op.inputs[position] for op in batch}
    if len(refs) != 1:
      return None
    (ref,) = refs
    return ref if isinstance(ref, Literal) or avals[ref].shape == () else None

  if name in _UNARY or name in ('square', 'integer_pow', 'copy'):
    if not is_full_list(0):
      return None
    xs = [op.inputs[0] for op in batch]
    if name in _UNARY:
      kernel = _UNARY[name]
      return lambda slots: write(slots, kernel([slots[r] for r in xs]))
    if name == 'copy':
      return lambda slots: write(slots, torch._foreach_clone([slots[r] for r in xs]))
    power = 2 if name == 'square' else batch[0].params['y']
    if power < 1:
      return None
    return lambda slots: write(slots, _foreach_integer_pow([slots[r] for r in xs], power))

  if name not in _LIST_LIST or len(batch[0].inputs) != 2:
    return None
  kernel = _LIST_LIST[name]
  xs, ys = ([op.inputs[i] for op in batch] for i in (0, 1))
  if is_full_list(0) and is_full_list(1):
    return lambda slots: write(slots, kernel([slots[r] for r in xs], [slots[r] for r in ys]))
  if is_full_list(0) or is_full_list(1):
    scalar_first = not is_full_list(0)
    other = shared(0 if scalar_first else 1)
    if other is None:
      return None
    lst = ys if scalar_first else xs
    scalar_first = scalar_first and name not in _COMMUTATIVE
    if isinstance(other, Literal):
      value = other.value
      if not scalar_first:
        return lambda slots: write(slots, kernel([slots[r] for r in lst], value))
      if name == 'sub':
        return lambda slots: write(
            slots, torch._foreach_add(torch._foreach_neg([slots[r] for r in lst]), value))
      if name == 'pow':
        return lambda slots: write(slots, torch._foreach_pow(value, [slots[r] for r in lst]))
      return None
    if not scalar_first and name in _TENSOR_OVERLOAD:
      return lambda slots: write(slots, kernel([slots[r] for r in lst], slots[other]))
  return None


def _foreach_integer_pow(xs: list[torch.Tensor], power: int) -> list[torch.Tensor]:
  """``lax.integer_pow`` for positive powers, in XLA's multiplication order."""
  acc = None
  while power > 0:
    if power & 1:
      acc = xs if acc is None else torch._foreach_mul(acc, xs)
    power >>= 1
    if power > 0:
      xs = torch._foreach_mul(xs, xs)
  return acc


def schedule(graph: Graph) -> list[Step]:
  """The steps that run ``graph``, batching same-depth operations into foreach calls.

  Each intermediate is dropped after the last step that reads it (a step
  of its own), so a step holds only the values still needed.
  """
  broadcasts = {op.outputs[0]: op.inputs[0] for op in graph.ops
                if op.primitive == 'broadcast_in_dim' and (
                    isinstance(op.inputs[0], Literal) or graph.avals[op.inputs[0]].shape == ())}
  groups: dict[tuple, list[Op]] = {}
  for op, level in zip(graph.ops, _levels(graph)):
    key = (level, op.primitive, _params_key(op), len(op.outputs) == 1)
    groups.setdefault(key, []).append(op)
  batches: list[tuple[Step, list[Op]]] = []
  for key in sorted(groups, key=lambda k: (k[0], k[1] in _VIEWS)):
    batch = groups[key]
    step = _batched(graph, batch, broadcasts) if key[3] else None
    batches.extend([(step, batch)] if step is not None else [(_single(op), [op]) for op in batch])
  kept = set(graph.inputs) | set(graph.constants) | {
      r for r in graph.outputs if not isinstance(r, Literal)}
  last: dict[int, int] = {}
  for i, (_, ops) in enumerate(batches):
    for op in ops:
      for r in op.inputs:
        # A flat call reads a broadcast's 0-d source in its place (see _flat_batched).
        for read in (r, broadcasts.get(r)) if not isinstance(r, Literal) else ():
          if read is not None and not isinstance(read, Literal) and read not in kept:
            last[read] = i
  dying: dict[int, list[int]] = {}
  for slot, i in last.items():
    dying.setdefault(i, []).append(slot)
  steps: list[Step] = []
  for i, (step, _) in enumerate(batches):
    steps.append(step)
    if i in dying:
      steps.append(_forget(dying[i]))
  return steps


def _forget(slots: list[int]) -> Step:
  def step(values: Slots) -> None:
    for slot in slots:
      del values[slot]
  return step


def run(graph: Graph, steps: Sequence[Step], args: Sequence[Any],
        constants: dict[int, torch.Tensor]) -> list[Any]:
  """Runs ``steps`` (from :func:`schedule`) on ``args``; returns the graph's outputs.

  ``constants`` are the graph's constants on the arguments' device.
  """
  slots: Slots = dict(zip(graph.inputs, args))
  slots.update(constants)
  for step in steps:
    step(slots)
  return [_read(slots, r) for r in graph.outputs]
