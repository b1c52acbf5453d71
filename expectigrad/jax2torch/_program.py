"""A jaxpr turned into a flat list of torch operations, and its interpreter.

:func:`build` walks a ``ClosedJaxpr`` once, at trace time: nested calls
(``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``closed_call``,
``remat``) are inlined, literals become Python scalars of their exact value,
constants become tensors, and every parameter becomes a plain Python value
(numpy dtypes -> torch dtypes; shardings and other JAX objects dropped). The
result refers to no JAX object at run time, so running it is plain torch
code that ``torch.compile`` can capture whole.

Control flow keeps its sub-jaxprs as sub-programs (:mod:`._control_flow`),
whose constants the enclosing operation receives as operands (so they are
placed on the device with the program's own):

- ``cond`` runs every branch and selects the result elementwise;
- ``scan`` runs its body ``length`` times (unrolled under a compiler);
- ``while`` whose trip count follows from constants alone (``fori_loop``
  with static bounds) is counted when the program is built and runs as a
  counted loop; any other reads its predicate on the host at every
  iteration, and raises inside ``torch.compile`` or ``make_fx`` tracing.

Only that last case syncs with the device; the rest is the same code eager
and compiled.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from jax.extend import core as jax_core
import numpy as np
import torch

from expectigrad.jax2torch import _control_flow, _primitives
from expectigrad.jax2torch._graph import Aval, Graph, Literal, Op, Ref

# Primitives whose sub-jaxpr is inlined, with the parameter that holds it.
INLINED = {
    'jit': 'jaxpr', 'pjit': 'jaxpr', 'closed_call': 'call_jaxpr', 'core_call': 'call_jaxpr',
    'remat': 'jaxpr', 'checkpoint': 'jaxpr', 'custom_jvp_call': 'call_jaxpr',
    'custom_vjp_call': 'call_jaxpr', 'custom_vjp_call_jaxpr': 'fun_jaxpr',
}
# Primitives whose torch op takes a Python scalar as its second operand.
_SCALAR_OPERAND = frozenset(
    {'add', 'sub', 'mul', 'div', 'max', 'min', 'pow', 'eq', 'ne', 'lt', 'le', 'gt', 'ge'})
# Parameters with no meaning for torch.
_DROPPED_PARAMS = frozenset({'sharding', 'out_sharding', 'accuracy', 'weak_type'})


def _torch_value(value: Any) -> Any:
  """A parameter value with numpy dtypes turned into torch dtypes."""
  if isinstance(value, (np.dtype, type)) and value is not bool:
    try:
      return _primitives.torch_dtype(value)
    except (TypeError, AttributeError):
      return value
  if isinstance(value, (tuple, list)):
    return type(value)(_torch_value(v) for v in value)
  return value


def _plain_params(params: dict[str, Any]) -> dict[str, Any]:
  return {k: _torch_value(v) for k, v in params.items() if k not in _DROPPED_PARAMS}


def _literal_value(literal: Any) -> Any:
  """The literal's exact value as a Python scalar (bfloat16 values are exact in float)."""
  value = np.asarray(literal.val)
  if value.ndim:
    return torch.from_numpy(np.array(value))  # rare; a small constant array
  if value.dtype.kind == 'f' or value.dtype.name == 'bfloat16':
    return float(value.astype(np.float64))
  return value.item()


def _aval_of(var: Any) -> Aval:
  aval = var.aval
  return Aval(tuple(int(d) for d in aval.shape), _primitives.torch_dtype(aval.dtype))


class _Builder:
  """Inlines a jaxpr into a :class:`Graph`."""

  def __init__(self) -> None:
    self.ops: list[Op] = []
    self.constants: dict[int, torch.Tensor] = {}
    self.avals: dict[int, Aval] = {}
    self.unsupported: set[str] = set()
    self._literal_slots: dict[tuple, int] = {}
    self._computed: dict[tuple, list[int]] = {}
    self._producers: dict[int, Op] = {}
    self._values: dict[int, Any] = {}
    self._next = 0

  def new_slot(self, var: Any) -> int:
    slot = self._next
    self._next += 1
    self.avals[slot] = _aval_of(var)
    return slot

  def constant(self, var: Any, value: Any) -> int:
    """A slot holding a literal as a 0-d tensor; one slot per distinct literal."""
    key = (value, str(var.aval.dtype))
    if key not in self._literal_slots:
      slot = self.new_slot(var)
      self.constants[slot] = torch.tensor(value, dtype=self.avals[slot].dtype)
      self._literal_slots[key] = slot
    return self._literal_slots[key]

  def ref(self, env: dict, atom: Any) -> Ref:
    if isinstance(atom, jax_core.Literal):
      return Literal(_literal_value(atom))
    return env[atom]

  def closed(self, closed_jaxpr: Any, input_refs: Sequence[Ref]) -> list[Ref]:
    """Adds a ClosedJaxpr's equations; returns the refs of its outputs."""
    jaxpr = getattr(closed_jaxpr, 'jaxpr', closed_jaxpr)
    consts = getattr(closed_jaxpr, 'consts', ())
    env: dict[Any, Ref] = {}
    for var, value in zip(jaxpr.constvars, consts):
      slot = self.new_slot(var)
      self.constants[slot] = torch.from_numpy(np.array(value))
      env[var] = slot
    for var, ref in zip(jaxpr.invars, input_refs):
      env[var] = ref
    for eqn in jaxpr.eqns:
      self.equation(env, eqn)
    return [self.ref(env, v) for v in jaxpr.outvars]

  def equation(self, env: dict, eqn: Any) -> None:
    name = eqn.primitive.name
    inputs = [self.ref(env, v) for v in eqn.invars]
    if name in INLINED:
      sub = eqn.params[INLINED[name]]
      if name.startswith('custom_'):
        inputs = inputs[len(inputs) - len(getattr(sub, 'jaxpr', sub).invars):]
      for var, ref in zip(eqn.outvars, self.closed(sub, inputs)):
        env[var] = ref
      return
    # torch takes a Python scalar only as the second operand of some ops;
    # elsewhere a literal becomes a 0-d tensor constant of its own dtype.
    inputs = [
        self.constant(var, ref.value)
        if isinstance(ref, Literal) and (position == 0 or name not in _SCALAR_OPERAND) else ref
        for position, (var, ref) in enumerate(zip(eqn.invars, inputs))]
    if name in _control_flow.SUB_JAXPRS:
      self.control_flow(env, eqn, inputs)
      return
    params = _plain_params(eqn.params)
    if self.sink_broadcasts(env, eqn, name, params, inputs):
      return
    self.emit(env, eqn.outvars, name, params, inputs)

  def sink_broadcasts(self, env: dict, eqn: Any, name: str, params: dict,
                      inputs: list[Ref]) -> bool:
    """``f(broadcast(x), ...)`` as ``broadcast(f(x, ...))`` for elementwise ``f`` and 0-d ``x``.

    As XLA's algebraic simplifier does: an elementwise operation on
    broadcast scalars (``optax.tree.norm``'s ``0.0 ** 2`` per leaf) is
    computed once on the scalars, and only its result is broadcast (a view).
    Returns whether it did so.
    """
    if name not in _primitives.ELEMENTWISE or len(eqn.outvars) != 1 or not eqn.outvars[0].aval.shape:
      return False
    scalars, sunk = [], False
    for ref in inputs:
      producer = self._producers.get(ref) if not isinstance(ref, Literal) else None
      if producer is not None and producer.primitive == 'broadcast_in_dim' and (
          self.avals[producer.inputs[0]].shape == ()):
        scalars.append(producer.inputs[0])
        sunk = True
      elif isinstance(ref, Literal) or self.avals[ref].shape == ():
        scalars.append(ref)
      else:
        return False
    if not sunk:
      return False
    out = eqn.outvars[0].aval
    scalar = self.emit_scalar(name, params, scalars, _primitives.torch_dtype(out.dtype))
    shape = tuple(int(d) for d in out.shape)
    self.emit(env, eqn.outvars, 'broadcast_in_dim',
              {'shape': shape, 'broadcast_dimensions': ()}, [scalar])
    return True

  def emit_scalar(self, name: str, params: dict, inputs: list[Ref], dtype: torch.dtype) -> int:
    """The slot of a 0-d ``name(*inputs)`` (computed once per distinct computation)."""
    key = (name, repr(sorted(params.items())), tuple(inputs), 'scalar')
    if key not in self._computed:
      slot = self._next
      self._next += 1
      self.avals[slot] = Aval((), dtype)
      self._computed[key] = [slot]
      self.add(Op(name, params, inputs, [slot], _bind(_primitives.PRIMITIVES[name], params, 1)))
    return self._computed[key][0]

  def emit(self, env: dict, outvars: Sequence[Any], name: str, params: dict,
           inputs: list[Ref]) -> None:
    """Adds ``name(*inputs)`` for ``outvars`` (or reuses the same computation made before)."""
    # The same pure computation repeated per leaf (``-learning_rate``) runs once,
    # so every leaf's op shares its result and the leaves batch together.
    key: Any = (name, repr(sorted(params.items())), tuple(inputs))
    if any(isinstance(r, Literal) and isinstance(r.value, torch.Tensor) for r in inputs):
      key = None  # a constant-array literal: compared by identity, never equal to another
    if key is not None and key in self._computed:
      for var, slot in zip(outvars, self._computed[key]):
        env[var] = slot
      return
    outputs = [self.new_slot(v) for v in outvars]
    for var, slot in zip(outvars, outputs):
      env[var] = slot
    if key is not None:
      self._computed[key] = outputs
    if name in _primitives.PRIMITIVES:
      fn = _bind(_primitives.PRIMITIVES[name], params, len(outputs))
    else:
      self.unsupported.add(name)
      fn = _missing(name)
    self.add(Op(name, params, inputs, outputs, fn))

  def control_flow(self, env: dict, eqn: Any, inputs: list[Ref]) -> None:
    """Adds a ``cond``, ``scan`` or ``while``; its sub-programs' constants become operands."""
    graphs = [build(jaxpr) for jaxpr in _control_flow.sub_jaxprs(eqn)]
    self.unsupported.update(*(graph.unsupported for graph in graphs))
    outputs = [self.new_slot(v) for v in eqn.outvars]
    for var, slot in zip(eqn.outvars, outputs):
      env[var] = slot
    impl, params = _control_flow.implementation(
        eqn.primitive.name, eqn.params, graphs,
        [self.value(ref) for ref in inputs], [self.avals[slot] for slot in outputs])
    fn = _control_flow.with_sub_programs(impl, graphs, len(inputs))
    hoisted = [self.hoist(value) for graph in graphs for value in graph.constants.values()]
    self.add(Op(eqn.primitive.name, params, inputs + hoisted, outputs, fn))

  def add(self, op: Op) -> None:
    """Appends ``op``, remembering which op produces each of its outputs (see :meth:`value`)."""
    self.ops.append(op)
    for slot in op.outputs:
      self._producers[slot] = op

  def value(self, ref: Ref) -> Any:
    """The value of ``ref`` if constants alone determine it, computed on the host; else None.

    Only what a ``while`` loop's trip count needs is computed (a limit
    ``jnp.sum`` of a constant array, say).
    """
    if isinstance(ref, Literal):
      return ref.value
    if ref in self.constants:
      return self.constants[ref]
    if ref not in self._values:
      op = self._producers.get(ref)  # None for an argument
      operands = [self.value(r) for r in op.inputs] if op is not None else [None]
      try:
        computed = None if any(v is None for v in operands) else op.fn(*operands)
      except NotImplementedError:  # a primitive the table lacks
        computed = None
      self._values[ref] = None if computed is None else computed[op.outputs.index(ref)]
    return self._values[ref]

  def hoist(self, value: torch.Tensor) -> int:
    """A slot for a sub-program's constant, so that it is placed with this program's."""
    slot = self._next
    self._next += 1
    self.avals[slot] = Aval(tuple(value.shape), value.dtype)
    self.constants[slot] = value
    return slot


def _bind(impl: Callable, params: dict, n_outputs: int) -> Callable:
  def fn(*args):
    result = impl(*args, **params)
    return result if n_outputs > 1 else (result,)
  return fn


def _missing(name: str) -> Callable:
  def fn(*args):
    raise NotImplementedError(f'no torch lowering for the JAX primitive {name!r}')
  return fn


def build(closed_jaxpr: Any) -> Graph:
  """Lowers a ``ClosedJaxpr`` to a :class:`Graph` of torch operations."""
  builder = _Builder()
  jaxpr = getattr(closed_jaxpr, 'jaxpr', closed_jaxpr)
  inputs = [builder.new_slot(v) for v in jaxpr.invars]
  outputs = builder.closed(closed_jaxpr, inputs)
  return Graph(inputs, outputs, builder.ops, builder.constants, builder.avals,
               frozenset(builder.unsupported))
