"""``cond``, ``scan`` and ``while``: higher-order primitives run as sub-programs.

:mod:`._program` builds each sub-jaxpr into a :class:`~._graph.Graph` and
hands the enclosing operation the sub-programs' constants as trailing
operands; :func:`implementation` gives the torch function of the operation.
None of it knows what the sub-programs compute:

- ``cond``/``switch`` runs every branch and selects the results elementwise
  (no host sync; a branch not taken cannot leak an exception either, torch
  raises none on arithmetic);
- ``scan`` runs its body ``length`` times in a Python loop (unrolled under
  ``torch.compile``/``make_fx``), slicing ``xs`` and stacking ``ys``;
- ``while`` first looks for a trip count known when the program is built:
  the carry elements the predicate depends on (through the body, to a fixed
  point) start from constants and are updated from constants only
  (``fori_loop`` with static bounds, counters against a literal limit), so
  running that slice of the loop on the host once, at build time, counts
  the trips; the loop then runs the body that many times, without reading
  anything back from the device. Otherwise the predicate is read on the host
  at every iteration, which is impossible while tracing for a compiler, so
  it raises there.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from expectigrad import _private_torch
from expectigrad.jax2torch import _graph, _primitives

# Primitive -> the parameters holding its sub-jaxprs, in the order of its sub-programs.
SUB_JAXPRS: dict[str, tuple[str, ...]] = {
    'cond': ('branches',), 'scan': ('jaxpr',), 'while': ('cond_jaxpr', 'body_jaxpr')}
# Longest loop counted at build time; past it the predicate is read at run time.
MAX_COUNTED_TRIPS = 100_000

Call = Callable[[Sequence[Any]], list[Any]]  # a sub-program: operands -> results
Impl = Callable[..., tuple]  # impl(calls, *operands)


def sub_jaxprs(eqn: Any) -> list[Any]:
  """The closed sub-jaxprs of a control-flow equation, in :data:`SUB_JAXPRS` order."""
  jaxprs = []
  for name in SUB_JAXPRS[eqn.primitive.name]:
    value = eqn.params[name]
    jaxprs.extend(value if isinstance(value, (tuple, list)) else [value])
  return jaxprs


def with_sub_programs(impl: Impl, graphs: Sequence[_graph.Graph], n_operands: int
                      ) -> Callable[..., tuple]:
  """The operation's function: its ``n_operands`` operands, then every graph's constants.

  Args:
    impl: ``impl(calls, *operands)``, one call per graph.
    graphs: the sub-programs.
    n_operands: how many leading operands are the equation's own.

  Returns:
    A function of the operation's operands, as :class:`~._graph.Op` takes.
  """
  def fn(*operands):
    constants = iter(operands[n_operands:])
    calls = [_call(graph, {slot: next(constants) for slot in graph.constants})
             for graph in graphs]
    return impl(calls, *operands[:n_operands])
  return fn


def _call(graph: _graph.Graph, constants: dict[int, torch.Tensor]) -> Call:
  return lambda operands: _graph.run(graph, operands, constants)


def implementation(name: str, params: dict[str, Any], graphs: Sequence[_graph.Graph],
                   known: Sequence[Any], out_avals: Sequence[_graph.Aval]
                   ) -> tuple[Impl, dict[str, Any]]:
  """The torch implementation of a control-flow equation.

  Args:
    name: 'cond', 'scan' or 'while'.
    params: the equation's parameters, as plain Python values.
    graphs: its sub-programs, as :func:`sub_jaxprs` orders them.
    known: per operand, its value when it is a constant of the program, else None.
    out_avals: the results' shapes and dtypes.

  Returns:
    ``impl(calls, *operands)`` and the parameters to record on the operation.
  """
  if name == 'cond':
    return _cond, {}
  if name == 'scan':
    kept = {k: params[k] for k in ('length', 'reverse', 'num_consts', 'num_carry')}
    return _scan(**kept, out_avals=out_avals), kept
  n_cond, n_body = params['cond_nconsts'], params['body_nconsts']
  trips = trip_count(*graphs, n_cond, n_body, known, out_avals)
  kept = {'cond_nconsts': n_cond, 'body_nconsts': n_body, 'trips': trips}
  return _while(n_cond, n_body, trips, out_avals), kept


def _cond(calls: Sequence[Call], index: Any, *operands: Any) -> tuple:
  """``lax.cond``/``switch``: every branch runs, the index selects elementwise."""
  results = [call(operands) for call in calls]
  return tuple(_primitives.PRIMITIVES['select_n'](index, *values) for values in zip(*results))


def _tensors(values: Sequence[Any], avals: Sequence[_graph.Aval], device: torch.device
             ) -> list[torch.Tensor]:
  """Results as tensors: a constant result is a Python scalar, and a loop feeds it back."""
  return [v if isinstance(v, torch.Tensor) else
          torch.full(aval.shape, v, dtype=aval.dtype, device=device)
          for v, aval in zip(values, avals)]


def _device(operands: Sequence[Any]) -> torch.device:
  return next((o.device for o in operands if isinstance(o, torch.Tensor)), torch.device('cpu'))


def _scan(length: int, reverse: bool, num_consts: int, num_carry: int,
          out_avals: Sequence[_graph.Aval]) -> Impl:
  """``lax.scan``: the body once per index of ``xs``, ``ys`` stacked in index order."""
  carry_avals, y_avals = out_avals[:num_carry], out_avals[num_carry:]
  y_avals = [_graph.Aval(aval.shape[1:], aval.dtype) for aval in y_avals]

  def impl(calls, *operands):
    (body,) = calls
    device = _device(operands)
    consts = list(operands[:num_consts])
    carry = list(operands[num_consts:num_consts + num_carry])
    xs = operands[num_consts + num_carry:]
    ys = []
    for i in (reversed(range(length)) if reverse else range(length)):
      out = body([*consts, *carry, *(x[i] for x in xs)])
      carry = _tensors(out[:num_carry], carry_avals, device)
      ys.append(_tensors(out[num_carry:], y_avals, device))
    if reverse:
      ys.reverse()
    stacked = [torch.stack(column) if length else
               torch.empty((0, *aval.shape), dtype=aval.dtype, device=device)
               for column, aval in zip(zip(*ys) if ys else [()] * len(y_avals), y_avals)]
    return (*carry, *stacked)
  return impl


def _while(n_cond: int, n_body: int, trips: int | None, carry_avals: Sequence[_graph.Aval]
           ) -> Impl:
  """``lax.while_loop``: ``trips`` times, or while the predicate read on the host holds."""
  def impl(calls, *operands):
    cond, body = calls
    device = _device(operands)
    cond_consts = list(operands[:n_cond])
    body_consts = list(operands[n_cond:n_cond + n_body])
    carry = list(operands[n_cond + n_body:])
    if trips is not None:
      for _ in range(trips):
        carry = _tensors(body([*body_consts, *carry]), carry_avals, device)
      return tuple(carry)
    while _host_bool(cond([*cond_consts, *carry])[0]):
      carry = _tensors(body([*body_consts, *carry]), carry_avals, device)
    return tuple(carry)
  return impl


def _host_bool(predicate: Any) -> bool:
  """A loop predicate read on the host.

  Raises:
    RuntimeError: while tracing for a compiler (``torch.compile``, ``make_fx``),
      where the value is not known.
  """
  if not isinstance(predicate, torch.Tensor):
    return bool(predicate)
  if _private_torch.is_tracing() or isinstance(predicate, _private_torch.FakeTensor):
    raise RuntimeError(
        'a lax.while_loop whose predicate depends on the data reads it on the host at every '
        'iteration, which cannot be traced by torch.compile or make_fx (compile=True); '
        'run it eagerly, or give the loop a trip count known when tracing in JAX '
        '(fori_loop with static bounds, a scan).')
  return bool(predicate)


def trip_count(cond: _graph.Graph, body: _graph.Graph, n_cond: int, n_body: int,
               known: Sequence[Any], carry_avals: Sequence[_graph.Aval]) -> int | None:
  """The trips of a ``while`` loop, when constants alone decide them.

  Args:
    cond, body: the predicate's and the body's programs.
    n_cond, n_body: how many leading operands are their constants.
    known: per operand of the ``while`` (predicate constants, body constants,
      initial carry), its value when it is a constant of the program, else None.
    carry_avals: the carry's shapes and dtypes.

  Returns:
    The number of times the body runs, or None if it depends on the data (or
    exceeds :data:`MAX_COUNTED_TRIPS`).
  """
  cond_known, body_known, carry_known = (
      known[:n_cond], known[n_cond:n_cond + n_body], known[n_cond + n_body:])
  cond_slice, cond_needs = _slice(cond, [0])
  control = sorted(i - n_cond for i in cond_needs if i >= n_cond)
  while True:  # the carry the predicate depends on, through the body, to a fixed point
    body_slice, body_needs = _slice(body, control)
    grown = sorted(set(control) | {i - n_body for i in body_needs if i >= n_body})
    if grown == control:
      break
    control = grown
  needed = ([cond_known[i] for i in cond_needs if i < n_cond]
            + [body_known[i] for i in body_needs if i < n_body]
            + [carry_known[i] for i in control])
  if any(value is None for value in needed):
    return None
  values = {i: carry_known[i] for i in control}
  try:
    for trips in range(MAX_COUNTED_TRIPS + 1):
      if not bool(_graph.run(cond_slice, [*cond_known, *_carry(values, len(carry_known))])[0]):
        return trips
      out = _graph.run(body_slice, [*body_known, *_carry(values, len(carry_known))])
      values = dict(zip(control, _tensors(out, [carry_avals[i] for i in control],
                                          torch.device('cpu'))))
  except NotImplementedError:  # a primitive the table lacks: it stays unsupported
    return None
  return None


def _carry(values: dict[int, Any], n: int) -> list[Any]:
  """The carry operands of a slice: known values where it reads them (None elsewhere)."""
  return [values.get(i) for i in range(n)]


def _slice(graph: _graph.Graph, outputs: Sequence[int]) -> tuple[_graph.Graph, set[int]]:
  """``graph`` reduced to the operations ``outputs`` depend on.

  Returns:
    The reduced graph (the given outputs only) and the positions of the
    inputs it reads.
  """
  refs = [graph.outputs[i] for i in outputs]
  wanted = {r for r in refs if isinstance(r, int)}
  ops = []
  for op in reversed(graph.ops):
    if wanted.intersection(op.outputs):
      ops.append(op)
      wanted.update(r for r in op.inputs if isinstance(r, int))
  reduced = _graph.Graph(graph.inputs, refs, ops[::-1], graph.constants, graph.avals,
                           graph.unsupported)
  return reduced, {i for i, slot in enumerate(graph.inputs) if slot in wanted}
