"""A lowered program's form: slots, operations, the flat graph, and its plain interpreter.

:mod:`._program` builds a :class:`Graph` from a jaxpr; the schedules
(:mod:`._foreach`, :mod:`._inplace`) and control flow (:mod:`._control_flow`)
run it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch


@dataclasses.dataclass(frozen=True)
class Literal:
  """A constant operand, as a Python scalar of exactly the literal's value."""
  value: Any


@dataclasses.dataclass(frozen=True)
class Aval:
  """Shape and dtype of a slot, known at build time."""
  shape: tuple[int, ...]
  dtype: torch.dtype


Ref = Any  # int (a slot) or Literal


@dataclasses.dataclass
class Op:
  """One primitive application: ``slots[outputs] = fn(*operands)``.

  Attributes:
    primitive: the JAX primitive's name.
    params: its parameters as plain Python values.
    inputs: slots or literals.
    outputs: slots.
    fn: the torch implementation, parameters bound.
  """
  primitive: str
  params: dict[str, Any]
  inputs: list[Ref]
  outputs: list[int]
  fn: Callable[..., Any]


@dataclasses.dataclass
class Graph:
  """A flat program over numbered slots.

  Attributes:
    inputs: slots of the arguments, in order.
    outputs: refs of the results, in order.
    ops: the operations in an order that respects dependencies.
    constants: slot -> tensor for the jaxpr's constants (CPU; moved on use).
    avals: slot -> :class:`Aval`.
    unsupported: names of primitives with no torch implementation.
  """
  inputs: list[int]
  outputs: list[Ref]
  ops: list[Op]
  constants: dict[int, torch.Tensor]
  avals: dict[int, Aval]
  unsupported: frozenset[str]


def run(graph: Graph, args: Sequence[Any], constants: dict[int, torch.Tensor] | None = None
        ) -> list[Any]:
  """Runs ``graph`` one operation at a time; returns its outputs.

  Args:
    graph: the program.
    args: one value per input slot.
    constants: the graph's constants on the arguments' device (default: as built, on CPU).
  """
  slots: dict[int, Any] = dict(zip(graph.inputs, args))
  slots.update(graph.constants if constants is None else constants)
  for op in graph.ops:
    operands = [r.value if isinstance(r, Literal) else slots[r] for r in op.inputs]
    for slot, value in zip(op.outputs, op.fn(*operands)):
      slots[slot] = value
  return [r.value if isinstance(r, Literal) else slots[r] for r in graph.outputs]
