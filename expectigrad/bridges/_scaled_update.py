"""Updates that are a scalar times a new state leaf, found in a traced update.

Many optimizers' update is a scalar times one of their new state leaves:
Expectigrad's ``-lr / (1 - beta^t) * m``, SGD with momentum's ``-lr * trace``.
An executor that knows this needs no update buffer: it adds ``scale * leaf``
to the parameter (``torch._foreach_add_(params, leaves, alpha=scale)``)
instead of materialising the update. This module finds the pattern in a
traced update and rewrites the program to return the scales in place of
the updates. It is the JAX executor's one trick (:mod:`._torch_jax`) and
knows nothing of any optimizer: it reads the jaxpr.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax.numpy as jnp
from jax.extend import core as jax_core

# How far back from an update the walk looks: a few scalar factors.
_MAX_DEPTH = 16


@dataclasses.dataclass(frozen=True)
class Scaled:
  """One update as ``sign * prod(numerators) / prod(denominators) * state[leaf]``.

  Attributes:
    leaf: the index of the new state leaf among the program's state outputs.
    numerators, denominators: 0-d atoms (variables or literals) of the program.
    sign: +1 or -1.
  """

  leaf: int
  numerators: tuple[Any, ...]
  denominators: tuple[Any, ...]
  sign: int


def _is_scalar(atom: Any) -> bool:
  return not atom.aval.shape


def _walk(atom: Any, target: Any, producers: dict, leaves: dict, depth: int
          ) -> tuple[int, list, list, int] | None:
  """``atom`` as ``sign * num / den * leaf``, walking back through scalar factors; or None."""
  if not isinstance(atom, jax_core.Var) or depth > _MAX_DEPTH:
    return None
  if atom in leaves and atom.aval.shape == target.shape and atom.aval.dtype == target.dtype:
    return leaves[atom], [], [], 1
  eqn = producers.get(atom)
  if eqn is None:
    return None
  name, args = eqn.primitive.name, eqn.invars
  if name == 'neg':
    found = _walk(args[0], target, producers, leaves, depth + 1)
    return None if found is None else (found[0], found[1], found[2], -found[3])
  if name == 'mul':
    for factor, rest in ((args[0], args[1]), (args[1], args[0])):
      if _is_scalar(factor):
        found = _walk(rest, target, producers, leaves, depth + 1)
        if found is not None:
          return found[0], [*found[1], factor], found[2], found[3]
    return None
  if name == 'div' and _is_scalar(args[1]):
    found = _walk(args[0], target, producers, leaves, depth + 1)
    return None if found is None else (found[0], found[1], [*found[2], args[1]], found[3])
  return None


def find(closed: Any, n_updates: int) -> list[Scaled] | None:
  """Each of the first ``n_updates`` outputs as a scalar times a later (state) output.

  Args:
    closed: the traced update (a ClosedJaxpr) whose outputs are the updates,
      then the new state's leaves.
    n_updates: the number of updates.

  Returns:
    One :class:`Scaled` per update, or None unless every update is one.
  """
  jaxpr = closed.jaxpr
  producers = {v: eqn for eqn in jaxpr.eqns for v in eqn.outvars}
  leaves: dict[Any, int] = {}
  for k, var in enumerate(jaxpr.outvars[n_updates:]):
    if isinstance(var, jax_core.Var):
      leaves.setdefault(var, k)
  found = []
  for update in jaxpr.outvars[:n_updates]:
    walked = _walk(update, update.aval, producers, leaves, 0)
    if walked is None:
      return None
    leaf, numerators, denominators, sign = walked
    found.append(Scaled(leaf, tuple(numerators), tuple(denominators), sign))
  return found


def program(closed: Any, scaled: Sequence[Scaled]) -> Callable[..., tuple[Any, list]]:
  """The traced update returning ``(scales, new state leaves)`` instead of ``(updates, ...)``.

  Args:
    closed: the traced update, as given to :func:`find`.
    scaled: what :func:`find` returned for it.

  Returns:
    A function of the program's flat inputs; ``scales`` is one vector, an
    element per update, in the updates' dtype. XLA drops the updates' loops.
  """
  jaxpr = closed.jaxpr
  n_updates = len(scaled)
  factors = [a for s in scaled for a in (*s.numerators, *s.denominators)]
  rewritten = jax_core.ClosedJaxpr(
      jaxpr.replace(outvars=[*factors, *jaxpr.outvars[n_updates:]]), closed.consts)
  run = jax_core.jaxpr_as_fun(rewritten)
  dtypes = [v.aval.dtype for v in jaxpr.outvars[:n_updates]]

  def scales_and_state(*args):
    outputs = run(*args)
    values, state = iter(outputs[:len(factors)]), list(outputs[len(factors):])
    scales = []
    for s, dtype in zip(scaled, dtypes):
      scale = jnp.asarray(s.sign, dtype)
      for _ in s.numerators:
        scale = scale * next(values)
      for _ in s.denominators:
        scale = scale / next(values)
      scales.append(scale)
    return jnp.stack(scales), state

  return scales_and_state

