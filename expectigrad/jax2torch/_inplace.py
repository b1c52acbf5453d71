"""A lowered program run eagerly in little memory: the plan of every buffer, made once.

:func:`plan` turns a :class:`~._graph.Graph` into a :class:`Plan`, a list
of torch calls decided at build time, for programs over a few large tensors
(an elementwise update over one flat vector per state leaf, say). Run
naively, such a program keeps every intermediate until it returns and writes
its results into fresh tensors that the caller then copies into the state:
on an optimizer step that is ~16x the parameters' bytes in flight and a copy
per state leaf. The plan instead:

- drops operations whose results are never used, and relabels conversions
  to the dtype a value already has;
- frees every intermediate after its last use;
- writes each result in place over an operand that dies with it (an
  intermediate, or an input the caller *donates*), preferring the input a
  result is *aliased* to (a state leaf's old value for its new value), so
  results land where the caller wants them with no copy;
- reads a conversion's operand directly where torch's type promotion makes
  the consumer compute in the converted dtype anyway (``float + int`` is the
  float addition of the converted int), instead of materialising it;
- runs ``a + b * c`` as one ``addcmul`` (float32/float64, where ``b * c`` is
  used once): one pass instead of two, which torch computes as a fused
  multiply-add (one rounding instead of two, as XLA may also do);
- accepts *segmented* inputs: a list of tensors standing for their flat
  concatenation, concatenated at each use into a buffer the use may then
  overwrite, so no packed copy outlives the operation that reads it.

Every other operation computes what the primitive table computes
(``_primitives``), so results equal :func:`._graph.run`'s bit for bit
except where an ``addcmul`` rounds once.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch

from expectigrad.jax2torch import _rewrites
from expectigrad.jax2torch._graph import Graph, Literal, Op
from expectigrad.jax2torch._rewrites import Node

Env = dict

# Primitives whose result is its operand relabelled: no kernel, no buffer.
_ALIASES = frozenset({'reshape', 'broadcast_in_dim', 'squeeze', 'transpose', 'stop_gradient'})
# In-place methods ``x.m_(y)`` computing ``prim(x, y)`` into ``x``, bit for bit
# as the table's functional op; ``div`` only for floating point (the table
# truncates integers).
_METHODS = {
    'add': 'add_', 'sub': 'sub_', 'mul': 'mul_', 'div': 'div_', 'pow': 'pow_',
    'neg': 'neg_', 'abs': 'abs_', 'sqrt': 'sqrt_', 'rsqrt': 'rsqrt_', 'exp': 'exp_',
    'log': 'log_', 'log1p': 'log1p_', 'expm1': 'expm1_', 'sin': 'sin_', 'cos': 'cos_',
    'tanh': 'tanh_', 'logistic': 'sigmoid_', 'erf': 'erf_', 'floor': 'floor_', 'ceil': 'ceil_',
    'square': 'square_', 'and': 'bitwise_and_', 'or': 'bitwise_or_', 'xor': 'bitwise_xor_',
    'not': 'bitwise_not_', 'addcmul': 'addcmul_',
}
# Functional ops taking ``out=``: a result written over any dead buffer.
_OUT = {
    'add': torch.add, 'sub': torch.sub, 'mul': torch.mul, 'div': torch.div,
    'sqrt': torch.sqrt, 'rsqrt': torch.rsqrt, 'neg': torch.neg, 'addcmul': torch.addcmul,
    'and': torch.bitwise_and, 'or': torch.bitwise_or, 'xor': torch.bitwise_xor,
    'select_n': lambda which, false, true, out: torch.where(which, true, false, out=out),
}
_COMMUTATIVE = frozenset({'add', 'mul', 'and', 'or', 'xor'})
class _Builder:
  """Decides, for one graph, where each result goes and when each buffer dies."""

  def __init__(self, graph: Graph, donated: frozenset[int], aliases: Mapping[int, int],
               segmented: frozenset[int]):
    self.graph = graph
    self.avals = dict(graph.avals)  # a slot reused for a folded scalar changes its aval
    self.donated = {graph.inputs[i] for i in donated}
    self.segmented = {graph.inputs[i] for i in segmented}
    self.aliases = {k: graph.inputs[j] for k, j in aliases.items()}
    self.nodes = self._simplify(graph)

  # -- rewriting --------------------------------------------------------------------

  def _simplify(self, graph: Graph) -> list[Node]:
    nodes = [Node(op.primitive, list(op.inputs), op.outputs[0] if len(op.outputs) == 1 else None,
                   list(op.outputs), op.fn, _returns_operand(op)) for op in graph.ops]
    rename: dict[int, Any] = {}
    for node in nodes:  # conversions to the dtype a value has: the value itself
      node.inputs = [rename.get(r, r) if not isinstance(r, Literal) else r for r in node.inputs]
      if (node.primitive == 'convert_element_type' and not isinstance(node.inputs[0], Literal)
          and self.avals[node.inputs[0]].dtype == self.avals[node.output].dtype):
        rename[node.output] = node.inputs[0]
        node.primitive = 'dead'
    self.outputs = [rename.get(r, r) if not isinstance(r, Literal) else r for r in graph.outputs]
    # (value, destination input slot) per aliased result; a slot is computed into its
    # first destination (alias_of), any other gets a copy.
    self.alias_pairs = [(self.outputs[k], dest) for k, dest in sorted(self.aliases.items())]
    self.alias_of: dict[int, int] = {}
    for value, dest in self.alias_pairs:
      if not isinstance(value, Literal):
        self.alias_of.setdefault(value, dest)
    self.destinations = {dest for _, dest in self.alias_pairs}
    self.result_slots = {r for r in self.outputs if not isinstance(r, Literal)}
    nodes = [n for n in nodes if n.primitive != 'dead']
    nodes = _rewrites.fold_conversions(nodes, self.avals, self.outputs)
    nodes = _rewrites.fold_scalars(nodes, self.avals, self.outputs)
    nodes = _rewrites.fuse_addcmul(nodes, self.avals, self.outputs)
    return _rewrites.live(nodes, self.outputs)

  # -- buffers ------------------------------------------------------------------------

  def build(self) -> Plan:
    end = len(self.nodes)
    last = {slot: end for slot in self.outputs if not isinstance(slot, Literal)}
    for i, node in enumerate(self.nodes):
      for r in node.inputs:
        if not isinstance(r, Literal) and last.get(r) != end:
          last[r] = i
    buffer: dict[int, int] = {}  # slot -> the slot whose storage holds it
    until: dict[int, int] = {}  # buffer -> the last step that reads it
    writable: set[int] = set(self.donated)
    for slot in [*self.graph.inputs, *self.graph.constants]:
      buffer[slot] = slot
      until[slot] = end if slot in self.graph.constants else last.get(slot, -1)
    steps: list[Callable[[Env], None]] = []
    for i, node in enumerate(self.nodes):
      target, how = self._place(i, node, buffer, until, writable)
      steps.append(_step(node, how, target))
      for slot in node.outputs:
        if node.aliasing:
          owner = buffer[node.inputs[0]]
          until[owner] = max(until[owner], last.get(slot, -1))
        elif target is not None and target not in self.segmented:
          owner = target  # its old value died with this step
          until[owner] = last.get(slot, -1)
        else:
          owner = slot
          until[owner] = last.get(slot, -1)
          writable.add(slot)
        buffer[slot] = owner
      dead = [r for r in set(node.inputs) if not isinstance(r, Literal) and last.get(r) == i
              and r not in self.graph.inputs and r not in self.graph.constants]
      if dead:
        steps.append(_forget(dead))
    copies = self._final_copies(buffer)
    destinations = [self.aliases.get(k) for k in range(len(self.outputs))]
    return Plan(self.graph, self.outputs, steps, copies, destinations)

  def _place(self, i: int, node: Node, buffer: dict, until: dict, writable: set
             ) -> tuple[int | None, tuple]:
    """Where ``node`` writes: ``(buffer or None, how)``, how = ('fresh',) | ('method', pos) | ('out', slot holding it)."""
    out = node.output
    if out is None or node.aliasing or node.primitive not in {*_METHODS, *_OUT}:
      return None, ('fresh',)
    aval = self.avals[out]
    if node.primitive == 'div' and not aval.dtype.is_floating_point:
      return None, ('fresh',)
    if node.primitive == 'select_n' and (
        len(node.inputs) != 3 or self.avals[node.inputs[0]].dtype != torch.bool):
      return None, ('fresh',)

    # An input that receives a result must hold no other result at the end.
    is_result = out in self.result_slots

    def free(b: int) -> bool:
      if b in self.destinations and is_result and self.alias_of.get(out) != b:
        return False
      return (b in writable and until.get(b, math.inf) <= i and self.avals[b] == aval)

    candidates = []
    alias = self.alias_of.get(out)
    if alias is not None and free(alias):
      candidates.append(alias)
    for ref in node.inputs:
      if isinstance(ref, Literal) or self.avals[ref] != aval:
        continue
      b = ref if ref in self.segmented else buffer[ref]
      if (ref in self.segmented or free(b)) and b not in candidates:
        candidates.append(b)
    for b in candidates:
      positions = [p for p, r in enumerate(node.inputs)
                   if not isinstance(r, Literal) and (r == b or buffer.get(r) == b)]
      if node.primitive in _METHODS and 0 in positions:
        return b, ('method', 0)
      if node.primitive in _METHODS and node.primitive in _COMMUTATIVE and 1 in positions:
        return b, ('method', 1)
      if node.primitive in _OUT and b not in self.segmented:
        # the destination is read from a slot alive here: the alias (an input) or an operand
        holder = b if not positions else node.inputs[positions[0]]
        return b, ('out', holder)
    return None, ('fresh',)

  def _final_copies(self, buffer: dict) -> list[tuple[Any, int, bool]]:
    """``(value, destination input, clone first)`` for results not already in their input.

    A value is a slot or a Literal. Sources held in a buffer that another copy
    overwrites are cloned first, so the copies can run as one batch.
    """
    held = lambda value: None if isinstance(value, Literal) else buffer.get(value, value)
    pending = [(value, dest) for value, dest in self.alias_pairs if held(value) != dest]
    destinations = {dest for _, dest in pending}
    return [(value, dest, held(value) in destinations) for value, dest in pending]


def _returns_operand(op: Op) -> bool:
  """Whether ``op``'s table entry may return its first operand, or a view of it."""
  if op.primitive in _ALIASES:
    return True
  if op.primitive == 'integer_pow':
    return op.params.get('y') == 1
  if op.primitive.startswith('reduce_') or op.primitive == 'argmax':
    return not op.params.get('axes')
  return op.primitive == 'select_n' and len(op.inputs) == 2


def _forget(slots: list[int]) -> Callable[[Env], None]:
  def step(env: Env) -> None:
    for slot in slots:
      env.pop(slot, None)
  return step


def _read(env: Env, ref: Any) -> Any:
  if isinstance(ref, Literal):
    return ref.value
  value = env[ref]
  return torch.cat(value) if isinstance(value, list) else value


def _step(node: Node, how: tuple, target: int | None) -> Callable[[Env], None]:
  """The call that runs ``node`` as placed."""
  inputs, outputs = node.inputs, node.outputs
  if how[0] == 'fresh':
    fn, aliasing = node.fn, node.aliasing

    def fresh(env: Env) -> None:
      operands = [_read(env, r) for r in inputs]
      for slot, value in zip(outputs, fn(*operands)):
        # A table entry returning an operand as it is would let a later in-place
        # write reach that operand: give the result its own storage.
        owned = aliasing or not any(value is o for o in operands)
        env[slot] = value if owned else value.clone()
    return fresh
  out = node.output
  if how[0] == 'method':
    position = how[1]
    method = getattr(torch.Tensor, _METHODS[node.primitive])
    order = [position] + [p for p in range(len(inputs)) if p != position]

    def in_place(env: Env) -> None:
      operands = [_read(env, inputs[p]) for p in order]
      env[out] = method(*operands)
    return in_place
  fn_out = _OUT[node.primitive]

  holder = how[1]

  def into(env: Env) -> None:
    destination = env[holder]
    fn_out(*(_read(env, r) for r in inputs), out=destination)
    env[out] = destination
  return into


class Plan:
  """A graph's eager schedule with its buffers decided (see :func:`plan`)."""

  def __init__(self, graph: Graph, outputs: list[Any], steps: list[Callable[[Env], None]],
               copies: list[tuple[Any, int, bool]], destinations: list[int | None]):
    self._graph = graph
    self._outputs = outputs
    self._steps = steps
    self._tensor_copies = [c for c in copies if not isinstance(c[0], Literal)]
    self._fills = [(v, d) for v, d, _ in copies if isinstance(v, Literal)]
    self._destinations = destinations

  def __call__(self, args: Sequence[Any], constants: Mapping[int, torch.Tensor]) -> list[Any]:
    """Runs the plan; aliased results are written into their inputs, which are returned.

    Args:
      args: one value per input: a tensor, or for a segmented input a list of
        tensors (their flat concatenation).
      constants: the graph's constants on the arguments' device.
    """
    env: Env = dict(zip(self._graph.inputs, args))
    env.update(constants)
    for step in self._steps:
      step(env)
    sources = [_read(env, v).clone() if clone else _read(env, v)
               for v, _, clone in self._tensor_copies]
    if sources:
      torch._foreach_copy_([env[d] for _, d, _ in self._tensor_copies], sources)
    for value, dest in self._fills:
      env[dest].fill_(value.value)
    return [env[d] if d is not None else _read(env, r)
            for r, d in zip(self._outputs, self._destinations)]


def plan(graph: Graph, donated: Sequence[int] = (), aliases: Mapping[int, int] | None = None,
         segmented: Sequence[int] = ()) -> Plan:
  """The eager, memory-lean schedule of ``graph``.

  Args:
    graph: the lowered program.
    donated: positions of inputs whose tensors the plan may overwrite.
    aliases: ``{output index: input index}``: the result is written into
      that (donated) input's tensor, which the plan returns for it.
    segmented: positions of inputs passed as lists of 1-D tensors standing
      for their concatenation (the input's shape must be 1-D).

  Returns:
    A :class:`Plan`.
  """
  aliases = dict(aliases or {})
  if not set(aliases.values()) <= set(donated):
    raise ValueError('an aliased input must be donated.')
  return _Builder(graph, frozenset(donated), aliases, frozenset(segmented)).build()
