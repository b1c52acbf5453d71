"""Runs a :class:`~._program.Graph` with one ``torch._foreach_*`` call per batch.

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

import torch

from expectigrad.jax2torch._program import Graph, Literal, Op

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
# list (op) shared 0-d tensor: these take it as one tensor. ``add`` takes it
# as a list of the same tensor repeated: its Tensor overload reads the value
# on the host (``.item()``), a device sync that fails on fake tensors and
# breaks a ``torch.compile`` graph.
_TENSOR_OVERLOAD = frozenset({'mul', 'div'})
_REPEATED_TENSOR = frozenset({'add', 'sub'})


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


def _batched(graph: Graph, batch: list[Op]) -> Step | None:
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
    if not scalar_first and name in _REPEATED_TENSOR:
      return lambda slots: write(slots, kernel([slots[r] for r in lst], [slots[other]] * len(lst)))
    if scalar_first and name == 'sub':
      return lambda slots: write(slots, torch._foreach_add(
          torch._foreach_neg([slots[r] for r in lst]), [slots[other]] * len(lst)))
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
  groups: dict[tuple, list[Op]] = {}
  for op, level in zip(graph.ops, _levels(graph)):
    key = (level, op.primitive, _params_key(op), len(op.outputs) == 1)
    groups.setdefault(key, []).append(op)
  batches: list[tuple[Step, list[Op]]] = []
  for key in sorted(groups, key=lambda k: (k[0], k[1] in _VIEWS)):
    batch = groups[key]
    step = _batched(graph, batch) if key[3] else None
    batches.extend([(step, batch)] if step is not None else [(_single(op), [op]) for op in batch])
  kept = set(graph.inputs) | set(graph.constants) | {
      r for r in graph.outputs if not isinstance(r, Literal)}
  last: dict[int, int] = {}
  for i, (_, ops) in enumerate(batches):
    for op in ops:
      for r in op.inputs:
        if not isinstance(r, Literal) and r not in kept:
          last[r] = i
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
