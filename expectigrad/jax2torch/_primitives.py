"""The primitive table: one torch implementation per JAX primitive.

Each entry takes the equation's operands and its ``params`` (dtypes already
converted to torch dtypes, JAX-only entries such as shardings dropped), and
returns its result (a tuple for multi-output primitives). Operands are torch
tensors; a literal second operand of an arithmetic or comparison primitive
is a Python scalar of the literal's exact value (see ``_program``). Entries
compute in the operands' dtype, as XLA does, so arithmetic is bit-identical
to JAX.

Higher-order primitives (``jit``, ``cond``, ``custom_jvp_call``, ...) are
not here: they run sub-jaxprs, so :mod:`._program` handles them.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

Impl = Callable[..., Any]
PRIMITIVES: dict[str, Impl] = {}

# Primitives that compute each output element from the same element of their
# operands (0-d operands broadcast).
ELEMENTWISE = frozenset({
    'add', 'sub', 'mul', 'div', 'rem', 'neg', 'max', 'min', 'pow', 'integer_pow', 'square',
    'sqrt', 'rsqrt', 'exp', 'exp2', 'log', 'log1p', 'expm1', 'sin', 'cos', 'tan', 'tanh',
    'logistic', 'erf', 'abs', 'sign', 'floor', 'ceil', 'is_finite', 'eq', 'ne', 'lt', 'le',
    'gt', 'ge', 'and', 'or', 'xor', 'not', 'select_n', 'convert_element_type', 'clamp',
    'copy', 'stop_gradient',
})


def torch_dtype(dtype: Any) -> torch.dtype:
  """numpy/JAX dtype (bfloat16 included) -> torch dtype."""
  return getattr(torch, np.dtype(dtype).name)


def _register(*names: str) -> Callable[[Impl], Impl]:
  def decorate(impl: Impl) -> Impl:
    for name in names:
      PRIMITIVES[name] = impl
    return impl
  return decorate


def _elementwise(name: str, fn: Impl) -> None:
  PRIMITIVES[name] = lambda *args, **params: fn(*args)


# Arithmetic. Literal operands arrive as Python scalars of the literal's
# exact value, which torch applies in the tensor's dtype.
_elementwise('add', torch.add)
_elementwise('sub', torch.sub)
_elementwise('neg', torch.neg)
_elementwise('abs', torch.abs)
_elementwise('floor', torch.floor)
_elementwise('ceil', torch.ceil)
_elementwise('sqrt', torch.sqrt)
_elementwise('rsqrt', torch.rsqrt)
_elementwise('exp', torch.exp)
_elementwise('exp2', torch.exp2)
_elementwise('log', torch.log)
_elementwise('log1p', torch.log1p)
_elementwise('expm1', torch.expm1)
_elementwise('sin', torch.sin)
_elementwise('cos', torch.cos)
_elementwise('tan', torch.tan)
_elementwise('tanh', torch.tanh)
_elementwise('logistic', torch.sigmoid)
_elementwise('erf', torch.erf)
_elementwise('is_finite', torch.isfinite)
_elementwise('eq', torch.eq)
_elementwise('ne', torch.ne)
_elementwise('lt', torch.lt)
_elementwise('le', torch.le)
_elementwise('gt', torch.gt)
_elementwise('ge', torch.ge)
_elementwise('stop_gradient', lambda x: x)
_elementwise('copy', torch.clone)


@_register('sign')
def _sign(x, **_):
  """XLA's sign: +-0 and NaN map to themselves (``torch.sign`` gives +0 for all three)."""
  if not x.is_floating_point():
    return torch.sign(x)
  return torch.where((x == 0) | torch.isnan(x), x, torch.sign(x))


@_register('square')
def _square(x, **_):
  return x * x


@_register('mul')
def _mul(x, y, **_):  # params: out_dtype (None: the operands' dtype)
  return torch.mul(x, y)


@_register('div')
def _div(x, y, **_):
  floating = x.is_floating_point()
  return torch.div(x, y) if floating else torch.div(x, y, rounding_mode='trunc')


@_register('rem')
def _rem(x, y, **_):
  return torch.fmod(x, y)  # lax.rem takes the dividend's sign, as fmod does


@_register('pow')
def _pow(x, y, **_):
  return torch.pow(x, y)


@_register('integer_pow')
def _integer_pow(x, *, y: int):
  """Repeated squaring in the order XLA uses (``lax._integer_pow``): bit-identical."""
  if y == 0:
    return torch.ones_like(x)
  power, acc = abs(y), None
  while power > 0:
    if power & 1:
      acc = x if acc is None else acc * x
    power >>= 1
    if power > 0:
      x = x * x
  return torch.reciprocal(acc) if y < 0 else acc


def _zero_ties(x, y, result, signed_sum):
  """``result`` with ties of zeros replaced by ``signed_sum(x, y)``.

  XLA orders -0.0 below +0.0 in max/min (IEEE 754-2019 maximum/minimum);
  on ``x == y`` torch returns either operand (which one depends on the
  tensor's length: its vectorized loop and its scalar tail differ).
  """
  if not x.is_floating_point() or (not isinstance(y, torch.Tensor) and y != 0):
    return result
  return torch.where((x == 0) & (y == 0), signed_sum(x, y), result)


@_register('max')
def _max(x, y, **_):
  """NaN-propagating, and max(-0.0, +0.0) = +0.0, as XLA's max."""
  result = torch.clamp_min(x, y) if not isinstance(y, torch.Tensor) else torch.maximum(x, y)
  return _zero_ties(x, y, result, lambda a, b: a + b)  # -0 only if both are -0


@_register('min')
def _min(x, y, **_):
  """NaN-propagating, and min(-0.0, +0.0) = -0.0, as XLA's min."""
  result = torch.clamp_max(x, y) if not isinstance(y, torch.Tensor) else torch.minimum(x, y)
  return _zero_ties(x, y, result, lambda a, b: -(-a + -b))  # +0 only if both are +0


@_register('clamp')
def _clamp(lo, x, hi, **_):
  """``min(max(x, lo), hi)``, as XLA defines clamp (signed zeros included)."""
  return _min(_max(x, lo), hi)


@_register('and')
def _and(x, y, **_):
  return torch.bitwise_and(x, y)


@_register('or')
def _or(x, y, **_):
  return torch.bitwise_or(x, y)


@_register('xor')
def _xor(x, y, **_):
  return torch.bitwise_xor(x, y)


@_register('not')
def _not(x, **_):
  return torch.bitwise_not(x)


@_register('select_n')
def _select_n(which, *cases, **_):
  """``cases[which]``; a bool ``which`` picks between two cases."""
  if len(cases) == 1:
    return cases[0]
  if len(cases) == 2 and which.dtype == torch.bool:
    return torch.where(which, cases[1], cases[0])
  result = cases[-1]
  for index in range(len(cases) - 2, -1, -1):
    result = torch.where(which == index, cases[index], result)
  return result


@_register('convert_element_type')
def _convert_element_type(x, *, new_dtype, **_):
  return x != 0 if new_dtype == torch.bool else x.to(new_dtype)


# Shapes. JAX broadcasts explicitly, so these are views wherever torch can make one.
@_register('broadcast_in_dim')
def _broadcast_in_dim(x, *dynamic_shape, shape, broadcast_dimensions, **_):
  if dynamic_shape:
    raise NotImplementedError('broadcast_in_dim with dynamic shapes')
  expanded = [1] * len(shape)
  for source, target in enumerate(broadcast_dimensions):
    expanded[target] = x.shape[source]
  return x.reshape(expanded).expand(shape)


@_register('reshape')
def _reshape(x, *dynamic_shape, new_sizes, dimensions=None, **_):
  if dynamic_shape:
    raise NotImplementedError('reshape with dynamic shapes')
  if dimensions is not None:
    x = x.permute(dimensions)
  return x.reshape(new_sizes)


@_register('squeeze')
def _squeeze(x, *, dimensions, **_):
  return x.squeeze(tuple(dimensions)) if dimensions else x


@_register('transpose')
def _transpose(x, *, permutation, **_):
  return x.permute(permutation)


@_register('concatenate')
def _concatenate(*xs, dimension, **_):
  return torch.cat(xs, dim=dimension)


@_register('slice')
def _slice(x, *, start_indices, limit_indices, strides=None, **_):
  """A strided view: ``x[start:limit:stride]`` on every axis."""
  steps = strides or (1,) * x.ndim
  return x[tuple(slice(*bounds) for bounds in zip(start_indices, limit_indices, steps))]


@_register('iota')
def _iota(*, dtype, shape, dimension, sharding=None, **_):
  del sharding
  values = torch.arange(shape[dimension], dtype=dtype)
  view = [1] * len(shape)
  view[dimension] = shape[dimension]
  return values.reshape(view).expand(shape)


# Reductions. Their summation order is torch's, not XLA's: equal up to rounding.
@_register('reduce_sum')
def _reduce_sum(x, *, axes, **_):
  return torch.sum(x, dim=tuple(axes), dtype=x.dtype) if axes else x


def _extremum(x, axes, reduce, lowest: bool):
  """``reduce`` (amax/amin) over ``axes``; over an empty axis, the identity XLA uses
  (-inf/+inf, the integer minimum/maximum), where torch would raise."""
  if not axes:
    return x
  if all(x.shape[a] for a in axes):
    return reduce(x, dim=tuple(axes))
  if x.dtype == torch.bool:
    identity = not lowest
  elif x.is_floating_point():
    identity = -math.inf if lowest else math.inf
  else:
    identity = torch.iinfo(x.dtype).min if lowest else torch.iinfo(x.dtype).max
  shape = [n for d, n in enumerate(x.shape) if d not in axes]
  return torch.full(shape, identity, dtype=x.dtype, device=x.device)


@_register('reduce_max')
def _reduce_max(x, *, axes, **_):
  return _extremum(x, axes, torch.amax, lowest=True)


@_register('reduce_min')
def _reduce_min(x, *, axes, **_):
  return _extremum(x, axes, torch.amin, lowest=False)


@_register('reduce_prod')
def _reduce_prod(x, *, axes, **_):
  for axis in sorted(axes, reverse=True):
    x = torch.prod(x, dim=axis, dtype=x.dtype)  # torch.prod widens integers to int64
  return x


def _reduce_bitwise(x, axes, op, identity: int):
  """An integer ``reduce_and``/``reduce_or``: ``op`` folded over ``axes`` pairwise."""
  kept = [d for d in range(x.ndim) if d not in axes]
  reduced = math.prod(x.shape[d] for d in axes)
  x = x.permute(kept + sorted(axes)).reshape([x.shape[d] for d in kept] + [reduced])
  if x.shape[-1] == 0:
    return torch.full(x.shape[:-1], identity, dtype=x.dtype, device=x.device)
  while x.shape[-1] > 1:
    half = x.shape[-1] // 2
    folded = op(x[..., :half], x[..., half:2 * half])
    x = torch.cat([folded, x[..., 2 * half:]], dim=-1)
  return x[..., 0]


def _reduce_logical(logical: Callable, bitwise: Callable, identity: int) -> Impl:
  """``reduce_and``/``reduce_or``: logical for bool, bitwise for integers (keeping their dtype)."""
  def impl(x, *, axes, **_):
    if not axes:
      return x
    if x.dtype == torch.bool:
      return logical(x, dim=tuple(axes))
    return _reduce_bitwise(x, axes, bitwise, identity)
  return impl


PRIMITIVES['reduce_and'] = _reduce_logical(torch.all, torch.bitwise_and, -1)
PRIMITIVES['reduce_or'] = _reduce_logical(torch.any, torch.bitwise_or, 0)


@_register('argmax')
def _argmax(x, *, axes, index_dtype, **_):
  (axis,) = axes
  return torch.argmax(x, dim=axis).to(index_dtype)


@_register('dot_general')
def _dot_general(x, y, *, dimension_numbers, preferred_element_type=None, **_):
  (contract_x, contract_y), (batch_x, batch_y) = dimension_numbers
  letters = iter('abcdefghijklmnopqrstuvwxyz')
  x_names = [next(letters) for _ in range(x.ndim)]
  y_names = [next(letters) for _ in range(y.ndim)]
  for i, j in zip(list(contract_x) + list(batch_x), list(contract_y) + list(batch_y)):
    y_names[j] = x_names[i]
  out = [x_names[i] for i in batch_x]
  out += [n for i, n in enumerate(x_names) if i not in contract_x and i not in batch_x]
  out += [n for j, n in enumerate(y_names) if j not in contract_y and j not in batch_y]
  result = torch.einsum(f'{"".join(x_names)},{"".join(y_names)}->{"".join(out)}', x, y)
  if preferred_element_type is not None:
    result = result.to(preferred_element_type)
  return result
