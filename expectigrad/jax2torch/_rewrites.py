"""Rewrites of a lowered program before its in-place plan (see :mod:`._inplace`).

Each takes the plan's nodes in order and returns them rewritten: fewer
passes over memory for the same results (bit for bit, except where stated).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch

from expectigrad.jax2torch._graph import Literal

# Consumers that may read a conversion's operand instead (type promotion converts it
# on load); ``div`` only as the divisor, since the table's ``div`` reads the dividend's
# dtype to choose between true and truncating division.
_PROMOTING = {'add': (0, 1), 'sub': (0, 1), 'mul': (0, 1), 'div': (1,)}


@dataclasses.dataclass
class Node:
  """One operation of the plan (an :class:`Op`, or a fused ``addcmul``)."""
  primitive: str
  inputs: list[Any]
  output: int | None  # single-output nodes only; None for multi-output ops
  outputs: list[int]
  fn: Callable[..., Any]
  aliasing: bool = False  # its result may be its first operand's storage (not writable)


def is_float(dtype: torch.dtype) -> bool:
  return dtype in (torch.float32, torch.float64)


def _example(aval: Any) -> torch.Tensor:
  """A tiny tensor of the aval's dtype and rank, for ``torch.result_type``."""
  return torch.empty((1,) * len(aval.shape), dtype=aval.dtype)


def _consumers(nodes: list[Node]) -> dict[int, list[Node]]:
  consumers: dict[int, list[Node]] = {}
  for node in nodes:
    for r in node.inputs:
      if not isinstance(r, Literal):
        consumers.setdefault(r, []).append(node)
  return consumers


def fold_conversions(nodes: list[Node], avals: dict, outputs: Sequence[Any]) -> list[Node]:
  """Conversions read by consumers whose type promotion converts on load anyway: dropped."""
  consumers = _consumers(nodes)
  outputs = {r for r in outputs if not isinstance(r, Literal)}
  for node in nodes:
    if node.primitive != 'convert_element_type' or isinstance(node.inputs[0], Literal):
      continue
    source, converted = node.inputs[0], node.output
    users = consumers.get(converted, [])
    if converted in outputs or not users or not all(
        _promotes_to(user, converted, source, avals) for user in users):
      continue
    for user in users:
      user.inputs = [source if r == converted else r for r in user.inputs]
    node.primitive = 'dead'
  return [n for n in nodes if n.primitive != 'dead']


def _promotes_to(user: Node, converted: int, source: int, avals: dict) -> bool:
  """Whether ``user`` computes the same reading ``source`` where it reads ``converted``."""
  positions = [i for i, r in enumerate(user.inputs) if r == converted]
  if user.primitive not in _PROMOTING or not set(positions) <= set(_PROMOTING[user.primitive]):
    return False
  if len(user.inputs) != 2 or len(positions) != 1:
    return False
  other = user.inputs[1 - positions[0]]
  if isinstance(other, Literal):
    return False
  want = avals[converted].dtype
  as_read = [_example(avals[source]) if i == positions[0] else _example(avals[other])
             for i in range(2)]
  return torch.result_type(*as_read) == want and avals[other].dtype == want


def fold_scalars(nodes: list[Node], avals: dict, outputs: Sequence[Any]) -> list[Node]:
  """``(x / s) * t`` as ``x * (t / s)`` (and ``*``/``/`` alike) for 0-d ``s``, ``t``: one pass over x.

  Like XLA's division by a scalar (a multiplication by its reciprocal), this
  may change the last bit; the vector is read and written once instead of twice.
  """
  consumers = _consumers(nodes)
  outputs = {r for r in outputs if not isinstance(r, Literal)}
  producer = {n.output: n for n in nodes if n.output is not None}
  scalar = lambda r, dtype: (not isinstance(r, Literal) and avals[r].shape == ()
                             and avals[r].dtype == dtype)
  moved: dict[int, Node] = {}  # id(outer node) -> the folded scalar's node
  for node in nodes:
    if node.primitive not in ('mul', 'div') or node.output is None:
      continue
    dtype = avals[node.output].dtype
    if not is_float(dtype) or avals[node.output].shape == ():
      continue
    for position in ((0, 1) if node.primitive == 'mul' else (0,)):
      inner_ref, outer_scale = node.inputs[position], node.inputs[1 - position]
      inner = producer.get(inner_ref) if not isinstance(inner_ref, Literal) else None
      if (inner is None or inner.primitive not in ('mul', 'div') or inner_ref in outputs
          or len(consumers.get(inner_ref, [])) != 1 or not scalar(outer_scale, dtype)):
        continue
      if inner.primitive == 'mul' and scalar(inner.inputs[0], dtype):
        x, inner_scale = inner.inputs[1], inner.inputs[0]
      elif scalar(inner.inputs[1], dtype):
        x, inner_scale = inner.inputs
      else:
        continue
      if isinstance(x, Literal) or avals[x].shape != avals[node.output].shape:
        continue
      # x * a * b = x * (a*b); x / a * b = x * (b/a); x * a / b = x * (a/b); x / a / b = x / (a*b)
      combine, outer = {('mul', 'mul'): (torch.mul, 'mul'), ('div', 'mul'): (torch.div, 'mul'),
                        ('mul', 'div'): (torch.div, 'mul'), ('div', 'div'): (torch.mul, 'div')}[
                            inner.primitive, node.primitive]
      operands = ([outer_scale, inner_scale] if (inner.primitive, node.primitive) == ('div', 'mul')
                  else [inner_scale, outer_scale])
      inner.primitive, inner.inputs = 'mul' if combine is torch.mul else 'div', operands
      inner.fn = lambda a, b, combine=combine: (combine(a, b),)
      avals[inner.output] = avals[inner_scale]
      node.primitive, node.inputs = outer, [x, inner.output]
      node.fn = (lambda a, b: (torch.mul(a, b),)) if outer == 'mul' else (
          lambda a, b: (torch.div(a, b),))
      moved[id(node)] = inner  # the scalar is computed where both its operands exist
      break
  ordered = []
  for node in nodes:
    if id(node) in moved:
      ordered.append(moved[id(node)])
    if node not in moved.values():
      ordered.append(node)
  return ordered


def fuse_addcmul(nodes: list[Node], avals: dict, outputs: Sequence[Any]) -> list[Node]:
  """``a + b * c`` as one ``addcmul`` (float32/float64, ``b * c`` used once)."""
  consumers = _consumers(nodes)
  outputs = {r for r in outputs if not isinstance(r, Literal)}
  producer = {n.output: n for n in nodes if n.output is not None}
  for node in nodes:
    if node.primitive != 'add' or not is_float(avals[node.output].dtype):
      continue
    for position in (1, 0):
      ref = node.inputs[position]
      mul = producer.get(ref) if not isinstance(ref, Literal) else None
      if (mul is None or mul.primitive != 'mul' or ref in outputs
          or len(consumers.get(ref, [])) != 1
          or any(isinstance(r, Literal) for r in mul.inputs)
          or isinstance(node.inputs[1 - position], Literal)
          or avals[node.inputs[1 - position]].shape != avals[node.output].shape
          or any(avals[r].dtype != avals[node.output].dtype for r in mul.inputs)):
        continue
      node.primitive, node.inputs = 'addcmul', [node.inputs[1 - position], *mul.inputs]
      node.fn = lambda a, b, c: (torch.addcmul(a, b, c),)
      mul.primitive = 'dead'
      break
  return [n for n in nodes if n.primitive != 'dead']


def live(nodes: list[Node], outputs: Sequence[Any]) -> list[Node]:
  """Nodes whose results are used, in order."""
  needed = {r for r in outputs if not isinstance(r, Literal)}
  kept = []
  for node in reversed(nodes):
    if any(s in needed for s in node.outputs):
      kept.append(node)
      needed.update(r for r in node.inputs if not isinstance(r, Literal))
  return kept[::-1]
