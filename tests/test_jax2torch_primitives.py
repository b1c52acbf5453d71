"""jax2torch, primitive by primitive, against JAX on random inputs.

Every case lowers a small ``jax.lax`` function with ``jax2torch.lower``,
checks that the program really runs the primitive under test, runs it with
``foreach=False`` and ``foreach=True`` (separate test ids), and compares the
result with jitted JAX:

- ``EXACT``: bit-identical values (NaN in the same places, zeros of the same
  sign) and the same dtype: arithmetic, comparisons, logic, shape operations,
  conversions, ``max``/``min`` (NaN-propagating, as XLA's);
- ``ULP``: at most ``max_ulp`` units in the last place of the JAX value (2
  unless the case says otherwise), NaN and infinities in the same places:
  transcendental functions, whose XLA and torch implementations differ;
- ``REL``: max |a - b| / max |b| below ``REL_TOL`` (``reduce_sum``,
  ``reduce_prod``, ``dot_general``: their summation order differs).

Elementwise cases apply the primitive to five argument sets of different
shapes (a 0-d and an empty one included) in one program, so ``foreach=True``
runs them as one ``torch._foreach_*`` call wherever the scheduler batches
that primitive.

Known deviations from bit-identity (measured on XLA:CPU and torch CPU):

- ``sqrt``: torch's CPU kernel is MKL VML (``VML_HA``), not correctly
  rounded: 1 ulp off XLA's (exact) square root on ~18% of float32 and ~1.5%
  of float64 inputs. Checked at 1 ulp.
- ``div`` by a literal or a 0-d array: XLA rewrites ``x / broadcast(c)`` as
  ``x * broadcast(1 / c)``; torch divides. 1 ulp on ~33% of inputs. Checked
  at 1 ulp.
- ``exp2``, ``expm1``, ``tanh``, ``erf`` (float32) and ``log1p`` (float64):
  XLA's approximations are the less accurate side (up to 16-21, 4, 5, 4 and
  ~130 ulp from the true value; torch stays within 1 ulp). Checked at a
  per-case ``max_ulp``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax
from jax.extend import core as jex_core
from torch.fx.experimental.proxy_tensor import make_fx

from expectigrad import jax2torch
from expectigrad.jax2torch._control_flow import SUB_JAXPRS

EXACT, ULP, REL = 'exact', 'ulp', 'rel'
REL_TOL = {'float32': 1e-6, 'float64': 1e-14}
FLOATS = ('float32', 'float64')
INT = ('int32',)
BOOL = ('bool',)
NUMERIC = FLOATS + INT
LOGICAL = BOOL + INT
# Elementwise cases run on all of these at once (a 0-d and an empty set included).
ELEMENTWISE_SHAPES = ((3, 4), (5,), (2, 3, 3), (), (0, 3))
SHAPES_2D = ((3, 4), (2, 5))
SHAPES_3D = ((2, 3, 4), (3, 1, 5), (2, 0, 3))
_SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0)


def ulps(float32: int = 2, float64: int = 2) -> Mapping[str, int]:
  """A ULP bound per float dtype."""
  return {'float32': float32, 'float64': float64}


# ---------------------------------------------------------------------------
# Input generators: (rng, shape, dtype) -> numpy array.

def normal(rng, shape, dtype):
  return np.asarray(3 * rng.standard_normal(shape), dtype)


def uniform(low, high):
  return lambda rng, shape, dtype: np.asarray(rng.uniform(low, high, shape), dtype)


def log_uniform(low, high):
  return lambda rng, shape, dtype: np.asarray(
      np.exp(rng.uniform(np.log(low), np.log(high), shape)), dtype)


def specials(rng, shape, dtype):
  """Normal values with about a third replaced by NaN, +-inf and +-0."""
  x = normal(rng, shape, dtype)
  mask = rng.random(shape) < 0.35
  x[mask] = rng.choice(np.array(_SPECIALS, dtype), size=int(mask.sum()))
  return x


def signed_zeros(rng, shape, dtype):
  """Mostly +-0.0 (ties of zeros of both signs), with +-1 and NaN."""
  return np.asarray(rng.choice(np.array([-0.0, 0.0, -0.0, 0.0, 1.0, -1.0, np.nan]), shape), dtype)


def small_ints(rng, shape, dtype):
  """Values in -3..3: ties for comparisons, argmax and max/min."""
  return np.asarray(rng.integers(-3, 4, shape), dtype)


def ints(rng, shape, dtype):
  return np.asarray(rng.integers(-1000, 1000, shape), dtype)


def nonzero_ints(rng, shape, dtype):
  x = ints(rng, shape, dtype)
  return np.asarray(np.where(x == 0, 7, x), dtype)


def nonzero(rng, shape, dtype):
  x = normal(rng, shape, dtype)
  return np.asarray(np.where(x == 0, 1, x), dtype)


def bools(rng, shape, dtype):
  del dtype
  return np.asarray(rng.random(shape) < 0.5)


def indices(n):
  return lambda rng, shape, dtype: np.asarray(rng.integers(0, n, shape), np.int32)


def scalar(gen):
  """``gen`` at shape (): a 0-d operand of its own in every argument set."""
  return lambda rng, shape, dtype: gen(rng, (), dtype)


def fixed_dtype(gen, dtype):
  """``gen`` in ``dtype``, whatever the case's dtype."""
  return lambda rng, shape, _: gen(rng, shape, dtype)


def by_kind(f=None, i=None, b=bools):
  """The generator for the dtype's kind: floats, (signed) integers, bools."""
  generators = {'f': f, 'i': i, 'b': b}
  return lambda rng, shape, dtype: generators[np.dtype(dtype).kind](rng, shape, dtype)


ANY = by_kind(f=specials, i=ints)  # NaN, infinities and signed zeros for floats
TIES = by_kind(f=specials, i=small_ints)
FINITE = by_kind(f=normal, i=ints)
LOGIC = by_kind(i=ints)  # random bits for integers, random bools


# ---------------------------------------------------------------------------
# Cases.

@dataclasses.dataclass(frozen=True)
class Case:
  """One lowering to check.

  Attributes:
    id: the test id.
    primitive: the primitive the lowered program must run.
    fn: the JAX function, taking one argument per entry of ``inputs``, then
      one per entry of ``shared``.
    inputs: one generator per argument of an argument set.
    shared: generators of 0-d arguments shared by every argument set (a
      learning rate, say: foreach batches them as one scalar operand).
    dtypes: the dtypes to run (passed to the generators).
    check: EXACT, ULP or REL.
    shapes: one argument set per shape, all lowered into one program.
    max_ulp: the ULP bound per float dtype.
    reference: expected outputs from the numpy arguments (default: ``jax.jit(fn)``).
    x64: trace and run JAX with 64-bit types even for 32-bit inputs.
    foreach_xfail: the xfail mark of ``foreach=True``, where it is known to differ.
  """
  id: str
  primitive: str
  fn: Callable[..., Any]
  inputs: tuple[Callable, ...]
  shared: tuple[Callable, ...] = ()
  dtypes: tuple[str, ...] = FLOATS
  check: str = EXACT
  shapes: tuple[tuple[int, ...], ...] = ELEMENTWISE_SHAPES
  max_ulp: Mapping[str, int] = dataclasses.field(default_factory=ulps, hash=False)
  reference: Callable[..., Any] | None = None
  x64: bool = False
  foreach_xfail: pytest.MarkDecorator | None = dataclasses.field(default=None, hash=False)


def elementwise(primitive, fn, *inputs, id=None, **kwargs):
  return Case(id or primitive, primitive, fn, inputs, **kwargs)


def unary(primitive, gen=specials, **kwargs):
  return elementwise(primitive, getattr(lax, primitive), gen, **kwargs)


def binary(primitive, gen=normal, gen_y=None, **kwargs):
  fn = getattr(lax, {'and': 'bitwise_and', 'or': 'bitwise_or', 'xor': 'bitwise_xor'}.get(
      primitive, primitive))
  return elementwise(primitive, fn, gen, gen_y or gen, **kwargs)


def fake_primitive(name: str, numpy_impl: Callable[..., np.ndarray]) -> Callable:
  """A function binding a JAX primitive called ``name``, for table entries
  named after primitives this JAX version does not emit (the shape and dtype
  of its result come from ``numpy_impl``)."""
  primitive = jex_core.Primitive(name)

  def abstract(x, **params):
    out = numpy_impl(np.zeros(x.shape, x.dtype), **params)
    return jax.core.ShapedArray(out.shape, out.dtype)

  primitive.def_abstract_eval(abstract)
  return lambda x, **params: primitive.bind(x, **params)




def _identity(op, dtype):
  """The identity of ``op`` in ``dtype``, from which ``lax.reduce`` picks the primitive."""
  if op not in (lax.max, lax.min):
    return {lax.add: 0, lax.mul: 1, lax.bitwise_and: -1, lax.bitwise_or: 0}[op]
  if np.dtype(dtype).kind == 'f':
    return -np.inf if op is lax.max else np.inf
  return np.iinfo(dtype).min if op is lax.max else np.iinfo(dtype).max


def reduction(name, op, axes, gen, dtypes, check=EXACT):
  """``lax.reduce`` with a monoid, which JAX emits as the ``name`` primitive."""
  fn = lambda x: lax.reduce(x, np.array(_identity(op, x.dtype), x.dtype), op, axes)  # noqa: E731
  return Case(f'{name}[{",".join(map(str, axes))}]', name, fn, (gen,), dtypes=dtypes,
              check=check, shapes=SHAPES_3D)


def convert(new_dtype, gen, source, x64=False):
  return Case(f'convert_element_type[{source}->{np.dtype(new_dtype).name}]',
              'convert_element_type', lambda x: lax.convert_element_type(x, new_dtype),
              (gen,), dtypes=(source,), x64=x64)


def shape_op(id, fn, shapes, **kwargs):
  """A shape operation (the primitive named by ``id``) on every dtype, specials included."""
  return Case(id, id.split('[')[0], fn, (ANY,), dtypes=NUMERIC, shapes=shapes, **kwargs)


def contraction(id, dimension_numbers, shape, dtypes=FLOATS, **kwargs):
  fn = lambda x, y: lax.dot_general(x, y, dimension_numbers, **kwargs)  # noqa: E731
  gen = by_kind(f=normal, i=small_ints)
  return Case(f'dot_general[{id}]', 'dot_general', fn, (gen, gen), dtypes=dtypes,
              check=REL, shapes=(shape,))


CASES: list[Case] = [
    # Arithmetic: two arrays, an array and a literal, an array and a 0-d array.
    binary('add', ANY, dtypes=NUMERIC),
    binary('sub', ANY, dtypes=NUMERIC),
    binary('mul', ANY, dtypes=NUMERIC),
    binary('div', specials, nonzero),
    binary('div', ints, nonzero_ints, dtypes=INT, id='div[int]'),
    binary('rem', normal, nonzero),
    binary('rem', ints, nonzero_ints, dtypes=INT, id='rem[int]'),
    binary('max', TIES, dtypes=NUMERIC),
    binary('min', TIES, dtypes=NUMERIC),
    elementwise('add', lambda x: lax.add(x, 1.5), specials, id='add[literal]'),
    elementwise('sub', lambda x: lax.sub(x, 0.1), specials, id='sub[literal]'),
    elementwise('sub', lambda x: lax.sub(2.0, x), specials, id='sub[literal-first]'),
    elementwise('mul', lambda x: lax.mul(x, 0.1), specials, id='mul[literal]'),
    elementwise('div', lambda x: lax.div(1.0, x), specials, id='div[literal-first]'),
    elementwise('max', lambda x: lax.max(x, 0.5), specials, id='max[literal]'),
    elementwise('min', lambda x: lax.min(x, 0.5), specials, id='min[literal]'),
    elementwise('add', lax.add, specials, shared=(normal,), id='add[0-d]'),
    elementwise('sub', lax.sub, specials, shared=(normal,), id='sub[0-d]'),
    elementwise('sub', lambda x, c: lax.sub(c, x), specials, shared=(normal,),
                id='sub[0-d-first]'),
    elementwise('mul', lambda x, c: lax.mul(c, x), specials, shared=(normal,),
                id='mul[0-d-first]'),
    elementwise('max', lax.max, specials, shared=(specials,), id='max[0-d]'),
    elementwise('max', lax.max, specials, scalar(specials), id='max[0-d-per-set]'),
    # XLA orders -0.0 below +0.0 in max, min and clamp.
    *(binary(name, signed_zeros, id=f'{name}[signed-zeros]')
      for name in ('max', 'min')),
    *(elementwise(name, lambda x, op=getattr(lax, name): op(x, 0.0), signed_zeros,
                  id=f'{name}[literal-0]')
      for name in ('max', 'min')),
    elementwise('clamp', lambda x: lax.clamp(0.0, x, 1.0), signed_zeros, id='clamp[zero-bound]'),
    elementwise('clamp', lambda x: lax.clamp(-1.0, x, -0.0), signed_zeros,
                id='clamp[negative-zero-bound]'),
    # XLA computes x / broadcast(c) as x * broadcast(1 / c); torch divides.
    elementwise('div', lambda x: lax.div(x, 3.0), normal, id='div[literal]', check=ULP,
                max_ulp=ulps(1, 1)),
    elementwise('div', lax.div, normal, shared=(nonzero,), id='div[0-d]', check=ULP,
                max_ulp=ulps(1, 1)),
    unary('neg', ANY, dtypes=NUMERIC),
    unary('abs', ANY, dtypes=NUMERIC),
    unary('sign'),
    unary('sign', ints, dtypes=INT, id='sign[int]'),
    unary('floor'),
    unary('ceil'),
    unary('square', ANY, dtypes=NUMERIC),
    unary('is_finite'),
    # torch's CPU sqrt (MKL VML) is not correctly rounded; XLA's is.
    unary('sqrt', check=ULP, max_ulp=ulps(1, 1)),
    *(elementwise('integer_pow', lambda x, y=y: lax.integer_pow(x, y), nonzero,
                  id=f'integer_pow[{y}]') for y in range(-2, 6)),
    # Transcendental; the larger bounds are XLA's own error (torch's is <= 1 ulp).
    binary('pow', log_uniform(0.1, 10), uniform(-4, 4), check=ULP),
    binary('pow', normal, fixed_dtype(uniform(-3, 4), np.int32), check=ULP,
           id='pow[int-exponent]'),
    elementwise('pow', lambda x: lax.pow(x, 2.5), log_uniform(1e-3, 1e3), check=ULP,
                id='pow[literal]'),
    unary('rsqrt', log_uniform(1e-3, 1e3), check=ULP),
    unary('exp', uniform(-20, 20), check=ULP),
    unary('exp2', uniform(-30, 30), check=ULP, max_ulp=ulps(32, 32)),
    unary('log', log_uniform(1e-3, 1e3), check=ULP),
    unary('log1p', uniform(-0.9, 10), check=ULP, max_ulp=ulps(2, 256)),
    unary('expm1', uniform(-5, 5), check=ULP, max_ulp=ulps(8, 8)),
    unary('sin', uniform(-10, 10), check=ULP),
    unary('cos', uniform(-10, 10), check=ULP),
    unary('tan', uniform(-1.5, 1.5), check=ULP),
    unary('tanh', uniform(-10, 10), check=ULP, max_ulp=ulps(8, 8)),
    unary('logistic', uniform(-20, 20), check=ULP),
    unary('erf', uniform(-4, 4), check=ULP, max_ulp=ulps(8, 2)),
    # Comparisons, logic, selection.
    *(binary(name, TIES, dtypes=NUMERIC) for name in ('eq', 'ne', 'lt', 'le', 'gt', 'ge')),
    *(binary(name, LOGIC, dtypes=LOGICAL) for name in ('and', 'or', 'xor')),
    elementwise('not', lax.bitwise_not, LOGIC, dtypes=LOGICAL),
    elementwise('select_n', lax.select_n, bools, ANY, ANY, dtypes=NUMERIC,
                id='select_n[bool]'),
    elementwise('select_n', lax.select_n, indices(3), ANY, ANY, ANY, dtypes=NUMERIC,
                id='select_n[int32]'),
    elementwise('select_n', lax.select_n, scalar(bools), ANY, ANY, dtypes=NUMERIC,
                id='select_n[0-d-bool]'),
    elementwise('clamp', lambda x: lax.clamp(-0.5, x, 0.5), specials, id='clamp[literal]'),
    elementwise('clamp', lambda lo, x: lax.clamp(lo, x, lo + 1), uniform(-1, 0), specials,
                id='clamp[array]'),
    # Conversions.
    convert(np.int32, uniform(-1e3, 1e3), 'float32'),
    convert(np.int32, uniform(-1e3, 1e3), 'float64'),
    convert(np.float32, ints, 'int32'),
    convert(np.float64, ints, 'int32', x64=True),
    convert(np.bool_, specials, 'float32'),
    convert(np.bool_, specials, 'float64'),
    convert(np.bool_, ints, 'int32'),
    convert(np.int32, bools, 'bool'),
    convert(np.float32, bools, 'bool'),
    convert(np.float64, specials, 'float32', x64=True),
    convert(np.float32, specials, 'float64'),
    convert(jnp.bfloat16, specials, 'float32'),
    # Shapes.
    shape_op('broadcast_in_dim',
             lambda x: lax.broadcast_in_dim(x, (2,) + x.shape, tuple(range(1, x.ndim + 1))),
             ((3, 4), (5,), ())),
    shape_op('broadcast_in_dim[size-1]', lambda x: lax.broadcast_in_dim(x, (3, 2, 4), (0, 2)),
             ((3, 1),)),
    shape_op('reshape', lambda x: lax.reshape(x, (x.size,)), ((3, 4), (2, 3, 3), (), (0, 3))),
    shape_op('squeeze', lambda x: lax.squeeze(x, [i for i, d in enumerate(x.shape) if d == 1]),
             ((3, 1, 4), (1,), (1, 2, 1))),
    shape_op('transpose', lambda x: lax.transpose(x, tuple(range(1, x.ndim)) + (0,)),
             SHAPES_3D),
    Case('concatenate', 'concatenate', lambda x, y: lax.concatenate([x, y, x], 0), (ANY, ANY),
         dtypes=NUMERIC, shapes=((3, 4), (2,))),
    shape_op('slice', lambda x: lax.slice(x, (1, 0, 1), (2, 3, 4)), ((2, 3, 4), (3, 3, 5))),
    shape_op('slice[strided]', lambda x: lax.slice(x, (0, 1, 0), x.shape, (2, 1, 3)),
             ((2, 3, 4), (3, 2, 5), (4, 1, 0))),
    *(Case(f'iota[{dtype}]', 'iota', lambda dtype=dtype: lax.broadcasted_iota(dtype, (3, 4), 1),
           (), dtypes=(dtype,), shapes=((),)) for dtype in INT + FLOATS),
    # Reductions (SHAPES_3D includes an empty axis: XLA's identities).
    *(reduction('reduce_sum', lax.add, axes, FINITE, NUMERIC, check=REL)
      for axes in ((1,), (0, 2))),
    reduction('reduce_prod', lax.mul, (0, 2), uniform(0.5, 2), FLOATS, check=REL),
    reduction('reduce_prod', lax.mul, (0, 2), small_ints, INT),
    *(reduction(name, op, axes, TIES, NUMERIC)
      for name, op in (('reduce_max', lax.max), ('reduce_min', lax.min))
      for axes in ((1,), (0, 2))),
    *(reduction(name, op, axes, LOGIC, LOGICAL)
      for name, op in (('reduce_and', lax.bitwise_and), ('reduce_or', lax.bitwise_or))
      for axes in ((1,), (0, 2))),
    *(Case(f'argmax[{axis}]', 'argmax', lambda x, axis=axis: lax.argmax(x, axis, np.int32),
           (TIES,), dtypes=NUMERIC, shapes=SHAPES_2D) for axis in (0, 1)),
    contraction('matmul', (((1,), (0,)), ((), ())), (4, 4)),
    contraction('batched', (((2,), (1,)), ((0,), (0,))), (2, 3, 3)),
    contraction('two-axes', (((0, 2), (2, 0)), ((), ())), (3, 4, 3)),
    contraction('int', (((1,), (0,)), ((), ())), (4, 4), dtypes=INT),
    contraction('int->float32', (((1,), (0,)), ((), ())), (4, 4), dtypes=INT,
                preferred_element_type=np.float32),
    # Identities.
    elementwise('copy', jnp.copy, ANY, dtypes=NUMERIC),
    elementwise('stop_gradient', lax.stop_gradient, ANY, dtypes=NUMERIC),
]
# Not one case each: test_cond_runs_every_branch and the loop tests below.
COVERED_ELSEWHERE = frozenset({'cond', 'scan', 'while'})


# ---------------------------------------------------------------------------
# Comparison.

def _numpy(value: Any) -> np.ndarray:
  """A torch tensor or JAX array as numpy; bfloat16 widened exactly to float32."""
  if isinstance(value, torch.Tensor):
    value = value.detach().cpu()
    return value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
  value = np.asarray(value)
  return value.astype(np.float32) if value.dtype.name == 'bfloat16' else value


def ulp_distance(actual: np.ndarray, expected: np.ndarray) -> float:
  """Max |actual - expected| in units of ``np.spacing(expected)`` over the finite
  values; NaN and infinities must be in the same places."""
  np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
  finite = np.isfinite(expected)
  np.testing.assert_array_equal(actual[~finite], expected[~finite])
  if not finite.any():
    return 0.0
  spacing = np.spacing(np.abs(expected[finite])).astype(np.float64)
  diff = np.abs(actual[finite].astype(np.float64) - expected[finite].astype(np.float64))
  return float(np.max(diff / spacing))


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
  """max |actual - expected| / max |expected| (the absolute error where expected is 0)."""
  scale = np.max(np.abs(expected), initial=0.0)
  diff = np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0)
  return float(diff / scale) if scale else float(diff)


def assert_matches(actual: Any, expected: Any, check: str,
                   bounds: Mapping[str, float] | None = None) -> None:
  """``actual`` (torch) against ``expected`` (JAX/numpy): same dtype, same shape,
  values as ``check`` says (integers and bools always exactly). ``bounds``: the
  ULP or relative bound per result dtype (default ``ulps()``, ``REL_TOL``)."""
  assert actual.dtype == jax2torch.torch_dtype(expected.dtype)
  assert tuple(actual.shape) == tuple(expected.shape)
  a, e = _numpy(actual), _numpy(expected)
  if check == EXACT or a.dtype.kind != 'f':
    np.testing.assert_array_equal(a, e, strict=True)
    if a.dtype.kind == 'f':  # -0.0 == 0.0: compare the signs too
      np.testing.assert_array_equal(np.signbit(a) | np.isnan(a), np.signbit(e) | np.isnan(e))
  elif check == ULP:
    assert ulp_distance(a, e) <= (bounds or ulps())[a.dtype.name]
  else:
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(e))
    assert relative_error(a, e) < (bounds or REL_TOL)[a.dtype.name]


def lower_checked(fn: Callable, *args: Any, primitive: str) -> jax2torch.Program:
  """``jax2torch.lower(fn, *args)``, checked to run ``primitive`` and nothing unsupported."""
  program = jax2torch.lower(fn, *args)
  assert primitive in program.primitives, sorted(program.primitives)
  assert program.unsupported == frozenset()
  return program


def run_program(program: jax2torch.Program, args: Any, foreach: bool) -> list[Any]:
  """Runs ``program`` on the numpy leaves of ``args`` as torch tensors."""
  flat = [torch.from_numpy(np.array(leaf)) for leaf in jax.tree.leaves(args)]
  return program(*flat, foreach=foreach)


def _x64(dtype: str, force: bool = False):
  return jax.enable_x64(force or dtype.endswith('64'))


@functools.lru_cache(maxsize=None)
def _lowered(case: Case, dtype: str) -> tuple[jax2torch.Program, list, list]:
  """The case's program, arguments and expected outputs (shared by both paths)."""
  rng = np.random.default_rng(sum(map(ord, case.id + dtype)))
  sets = [tuple(gen(rng, shape, dtype) for gen in case.inputs) for shape in case.shapes]
  shared = tuple(gen(rng, (), dtype) for gen in case.shared)
  fn = lambda sets, shared: [case.fn(*args, *shared) for args in sets]  # noqa: E731
  with _x64(dtype, case.x64):
    if case.reference is None:
      expected = jax.jit(fn)(sets, shared)
    else:
      expected = [case.reference(*args, *shared) for args in sets]
    return lower_checked(fn, sets, shared, primitive=case.primitive), (sets, shared), expected


def _case_params():
  params = []
  for case in CASES:
    for dtype in case.dtypes:
      for foreach in (False, True):
        marks = [case.foreach_xfail] if foreach and case.foreach_xfail else []
        params.append(pytest.param(case, dtype, foreach, marks=marks,
                                   id=f'{case.id}-{dtype}-{"foreach" if foreach else "single"}'))
  return params


@pytest.mark.parametrize('case,dtype,foreach', _case_params())
def test_primitive_matches_jax(case: Case, dtype: str, foreach: bool):
  """The lowered primitive gives jitted JAX's result (bit-identical unless the
  case says ULP or REL) on every argument set, with and without foreach batching."""
  program, args, expected = _lowered(case, dtype)
  actual = run_program(program, args, foreach)
  for a, e in zip(actual, jax.tree.leaves(expected), strict=True):
    assert_matches(a, e, case.check, case.max_ulp)


def _branches(n: int) -> list[Callable]:
  """Branches for ``cond``/``switch``; the first divides by zeros when not selected."""
  return [lambda x, y: (lax.div(x, y), y), lambda x, y: (lax.mul(x, y), x),
          lambda x, y: (lax.sub(x, y), lax.neg(y))][:n]


def _cond(index, x, y):
  return lax.cond(index.astype(bool), *_branches(2)[::-1], x, y)


def _switch(index, x, y):
  return lax.switch(index, _branches(3), x, y)


@pytest.mark.parametrize('foreach', [False, True], ids=['single', 'foreach'])
@pytest.mark.parametrize('dtype', FLOATS)
@pytest.mark.parametrize('fn,index', [(_cond, 0), (_cond, 1), (_switch, 0), (_switch, 1),
                                      (_switch, 2), (_switch, 5), (_switch, -1)],
                         ids=['cond-false', 'cond-true', 'switch-0', 'switch-1', 'switch-2',
                              'switch-clamped-high', 'switch-clamped-low'])
def test_cond_runs_every_branch(fn: Callable, index: int, dtype: str, foreach: bool):
  """``lax.cond``/``lax.switch`` on array operands give the selected branch's
  results (out-of-range switch indices clamped, as in JAX), bit-identical to
  JAX; infinities from a branch not taken do not leak into the result."""
  rng = np.random.default_rng(index + 10)
  x, y = normal(rng, (3, 4), dtype), normal(rng, (3, 4), dtype)
  y[0, :2] = 0  # x / 0 in the division branch
  args = (np.int32(index), x, y)
  with _x64(dtype):
    program = lower_checked(fn, *args, primitive='cond')
    expected = jax.jit(fn)(*args)
  for a, e in zip(run_program(program, args, foreach), expected, strict=True):
    assert_matches(a, e, EXACT)


# Loops. Each case: (function, argument generators, the ``while`` trip count
# the lowering must find when it builds the program: None for a loop whose
# predicate depends on the data, not applicable to ``scan``).

def _fori_static(x, y):
  """fori_loop with static bounds: a scan, its counter a carry."""
  return lax.fori_loop(0, 4, lambda i, v: v * y + i.astype(v.dtype), x)


def _scan_xs(x, xs, reverse=False):
  """Carry, ``xs`` sliced per step, two stacked ``ys``, one of them a literal."""
  return lax.scan(lambda c, a: (c * 0.5 + a, (c * a, 2.0)), x, xs, reverse=reverse)


def _scan_const_cond(x, xs):
  """A constant array and a ``cond`` in the body (sub-programs nest)."""
  weights = jnp.asarray(np.linspace(0.5, 1.5, x.shape[-1]), x.dtype)
  body = lambda c, a: (lax.cond(a[0, 0] > 0, lambda v: v * weights, lambda v: v - a, c), c)  # noqa: E731
  return lax.scan(body, x, xs)


def _scan_empty(x):
  return lax.scan(lambda c, _: (c * 2.0, c), x, length=0)


def _while_counted(x, y):
  """A counter against a literal limit; the body also reads an argument."""
  return lax.while_loop(lambda c: c[0] < 6, lambda c: (c[0] + 2, c[1] * y + 1.0), (1, x))


def _while_counted_const(x):
  """A limit computed from a constant array, a counter carried through a swap."""
  limit = jnp.asarray(np.array([2, 3], np.int32)).sum()
  return lax.while_loop(lambda c: c[1] < limit, lambda c: (c[1], c[0] + 1, c[2] * 1.5),
                        (0, 0, x))


def _while_bound(x, n):
  """fori_loop with a traced bound: a while whose trip count is data."""
  return lax.fori_loop(0, n, lambda i, v: v * 1.5 + i.astype(v.dtype), x)


def _while_data(x):
  """A predicate on the carried values themselves."""
  return lax.while_loop(lambda v: jnp.sum(jnp.abs(v)) < 100.0, lambda v: v * 2.0 + 1.0, x)


_LOOPS = {
    'fori-static': ('scan', _fori_static, (normal, normal), None),
    'scan-xs': ('scan', _scan_xs, (normal, lambda r, s, d: normal(r, (5,) + s, d)), None),
    'scan-reverse': ('scan', functools.partial(_scan_xs, reverse=True),
                     (normal, lambda r, s, d: normal(r, (5,) + s, d)), None),
    'scan-const-cond': ('scan', _scan_const_cond,
                        (normal, lambda r, s, d: normal(r, (6,) + s, d)), None),
    'scan-empty': ('scan', _scan_empty, (normal,), None),
    'while-counted': ('while', _while_counted, (normal, normal), 3),
    'while-counted-const': ('while', _while_counted_const, (normal,), 9),
    'while-bound': ('while', _while_bound,
                    (normal, lambda r, s, d: np.asarray(r.integers(2, 6), np.int32)), None),
    'while-data': ('while', _while_data, (log_uniform(0.1, 1),), None),
}


def _loop(name: str, dtype: str):
  """A loop case's program (checked to run its primitive), arguments and JAX's results."""
  primitive, fn, gens, trips = _LOOPS[name]
  rng = np.random.default_rng(len(name))
  args = tuple(gen(rng, (3, 4), dtype) for gen in gens)
  with _x64(dtype):
    program = lower_checked(fn, *args, primitive=primitive)
    expected = jax.tree.leaves(jax.jit(fn)(*args))
  loops = [op for op in program._graph.ops if op.primitive == primitive]
  if primitive == 'while':
    assert [op.params['trips'] for op in loops] == [trips]
  return program, args, expected


@pytest.mark.parametrize('foreach', [False, True], ids=['single', 'foreach'])
@pytest.mark.parametrize('dtype', FLOATS)
@pytest.mark.parametrize('name', list(_LOOPS))
def test_loop_matches_jax(name: str, dtype: str, foreach: bool):
  """``scan`` and ``while`` (fori_loop with static and traced bounds, nested
  ``cond``, constants in the body, zero trips) give JAX's results (to
  ``_FUSED_TOL``: XLA contracts the bodies' multiply-adds into FMAs); a
  ``while`` is counted when the program is built exactly when constants
  decide its trips."""
  program, args, expected = _loop(name, dtype)
  for a, e in zip(run_program(program, args, foreach), expected, strict=True):
    assert_matches(a, e, REL, _FUSED_TOL)


def _traced(program: jax2torch.Program, args: Any) -> Callable:
  """The program traced by ``make_fx`` on fake tensors, as the torch bridge's
  ``compile=True`` does: any read of a tensor's value on the host fails there
  (the program's constants are real tensors, as there)."""
  flat = [torch.from_numpy(np.array(leaf)) for leaf in jax.tree.leaves(args)]
  traced = make_fx(lambda *a: program(*a, foreach=False), tracing_mode='fake',
                   _allow_non_fake_inputs=True)(*flat)
  return lambda: traced(*flat)


@pytest.mark.parametrize('name', [n for n, loop in _LOOPS.items() if loop[3] is not None
                                  or loop[0] == 'scan'])
def test_loop_traces_without_host_reads(name: str):
  """A ``scan`` and a counted ``while`` trace on fake tensors (no value is read
  on the host) and under ``torch.compile(fullgraph=True)`` (no graph break);
  both traces give JAX's results."""
  program, args, expected = _loop(name, 'float32')
  flat = [torch.from_numpy(np.array(leaf)) for leaf in jax.tree.leaves(args)]
  compiled = torch.compile(lambda *a: program(*a, foreach=False), backend='eager',
                           fullgraph=True)
  for actual in (_traced(program, args)(), compiled(*flat)):
    for a, e in zip(actual, expected, strict=True):
      assert_matches(a, e, REL, _FUSED_TOL)


@pytest.mark.parametrize('name', ['while-bound', 'while-data'])
def test_data_dependent_while_refuses_tracing(name: str):
  """A ``while`` whose trip count is data reads its predicate on the host (it
  runs eagerly, above), so tracing it for a compiler raises one clear error:
  RuntimeError under ``make_fx``, and Dynamo's error carrying it under
  ``torch.compile(fullgraph=True)``."""
  program, args, _ = _loop(name, 'float32')
  with pytest.raises(RuntimeError, match='predicate depends on the data'):
    _traced(program, args)
  flat = [torch.from_numpy(np.array(leaf)) for leaf in jax.tree.leaves(args)]
  compiled = torch.compile(lambda *a: program(*a, foreach=False), backend='eager',
                           fullgraph=True)
  with pytest.raises(Exception, match='predicate depends on the data'):
    compiled(*flat)


def test_every_table_entry_is_tested():
  """Every primitive in ``jax2torch.PRIMITIVES`` has a case here, and every case
  tests a primitive of the table: the table and the tests stay in sync."""
  tested = {case.primitive for case in CASES}
  assert COVERED_ELSEWHERE == set(SUB_JAXPRS)  # the control flow _program handles
  assert set(jax2torch.PRIMITIVES) - tested - COVERED_ELSEWHERE == set()
  assert tested - set(jax2torch.PRIMITIVES) == set()


@pytest.mark.parametrize('fn,missing', [
    (lambda x: lax.cumsum(x), 'cumsum'),
    (jnp.sort, 'sort'),
    (lambda x: lax.cond(jnp.sum(x) > 0, lax.cumsum, lambda v: v, x), 'cumsum'),
    (lambda x: lax.fori_loop(0, 3, lambda i, v: lax.cumsum(v), x), 'cumsum'),
    (lambda x: lax.while_loop(lambda v: jnp.sum(v) < 1e3, lax.cumsum, x), 'cumsum'),
], ids=['cumsum', 'sort', 'inside-cond', 'inside-scan', 'inside-while'])
def test_unsupported_primitive_is_named(fn: Callable, missing: str):
  """A primitive absent from the table is named in ``Program.unsupported`` (also
  from inside a ``cond`` branch or a loop body), and running the program raises
  NotImplementedError naming it, with and without foreach batching."""
  assert missing not in jax2torch.PRIMITIVES
  x = np.arange(1, 6, dtype=np.float32)
  program = jax2torch.lower(fn, x)
  assert program.unsupported == {missing}
  for foreach in (False, True):
    with pytest.raises(NotImplementedError, match=repr(missing)):
      run_program(program, x, foreach)


def _per_leaf(m, g, s, n, x, c):
  """An optimizer-like step, ``jax.tree.map``-ed over lists of leaves."""
  def momentum(m, g, s, n):
    return 0.9 * m + 0.1 * g / (1e-8 + jnp.sqrt(s / jnp.maximum(n, 1).astype(s.dtype)))
  return (jax.tree.map(momentum, m, g, s, n), jax.tree.map(lambda x: 1.0 - x, x),
          jax.tree.map(lambda x: x - c, x))


# XLA:CPU contracts 0.9 * m + ... into an FMA (float32 too), and its sqrt is
# correctly rounded where torch's CPU sqrt is not: equal to a few ulp only.
_FUSED_TOL = {'float32': 1e-6, 'float64': 1e-15}


@pytest.mark.parametrize('dtype', FLOATS)
def test_foreach_batches_are_bit_identical(dtype: str):
  """The same expressions over five leaves of different shapes (a 0-d and an
  empty one included, a 0-d operand shared by all) run as ``torch._foreach_*``
  calls, bit-identical to running one equation at a time, and equal JAX to
  ``_FUSED_TOL`` relative."""
  rng = np.random.default_rng(0)
  shapes = ((3, 4), (5,), (2, 3, 3), (), (0, 2))
  leaves = lambda gen: [gen(rng, shape, dtype) for shape in shapes]  # noqa: E731
  counts = [np.asarray(rng.integers(0, 3, shape), np.int32) for shape in shapes]  # zeros too
  args = (leaves(normal), leaves(normal), leaves(log_uniform(1e-4, 10)), counts,
          leaves(normal), normal(rng, (), dtype))
  with _x64(dtype):
    expected = jax.tree.leaves(jax.jit(_per_leaf)(*args))
    program = jax2torch.lower(_per_leaf, *args)
  with torch.profiler.profile() as profile:
    batched = run_program(program, args, foreach=True)
  assert any(event.key.startswith('aten::_foreach_') for event in profile.key_averages())
  single = run_program(program, args, foreach=False)
  for b, s, e in zip(batched, single, expected, strict=True):
    assert_matches(b, s.numpy(), EXACT)
    assert_matches(s, e, REL, _FUSED_TOL)
