"""``Program.in_place``: the memory-lean eager schedule computes what the interpreter computes.

Every elementwise optax update below is lowered over one flat vector, then
run both by the plain interpreter (``foreach=False``, fresh tensors, every
intermediate kept) and by the in-place plan (state donated and written back,
gradients and parameters passed as segments), for several steps in float64.
The plan may round differently where it fuses (``addcmul``, a folded scalar
chain): results agree to 1e-12 relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import expectigrad
from expectigrad import jax2torch

N = 37  # not a multiple of anything the plan might align to
STEPS = 8

UPDATES = {
    'expectigrad': lambda: expectigrad.expectigrad(1e-2),
    'expectigrad dense counter': lambda: expectigrad.expectigrad(1e-2, sparse_counter=False),
    'expectigrad compensated': lambda: expectigrad.expectigrad(1e-2, compensated_sum=True),
    'expectigrad beta=0': lambda: expectigrad.expectigrad(1e-2, beta=0.0),
    'adam': lambda: optax.adam(1e-2),
    'adan (keeps the gradient)': lambda: optax.adan(1e-2),
    'rprop (selects on the state)': lambda: optax.rprop(1e-2),
    'optimistic_gradient_descent': lambda: optax.optimistic_gradient_descent(1e-2),
    'lion': lambda: optax.lion(1e-2),
    'sgd nesterov + clip': lambda: optax.chain(optax.clip(0.5), optax.sgd(1e-2, 0.9, nesterov=True)),
    'adamw (reads params)': lambda: optax.adamw(1e-2, weight_decay=0.1),
}


def _segments(vector: torch.Tensor) -> list[torch.Tensor]:
  return list(vector.split([5, 20, N - 25]))


@pytest.mark.parametrize('name', list(UPDATES))
def test_planned_update_equals_the_interpreter(name, x64):
  del x64
  opt = UPDATES[name]()
  vector = jax.ShapeDtypeStruct((N,), jnp.float64)
  state0 = opt.init(jnp.zeros(N))
  program = jax2torch.lower(lambda g, s, p: opt.update(g, s, p), vector, state0, vector)
  leaves = [torch.as_tensor(np.array(x)) for x in jax.tree.leaves(state0)]
  m = len(leaves)
  run = program.in_place(donated=range(1, 1 + m), aliases={1 + k: 1 + k for k in range(m)},
                         segmented=[0, 1 + m])
  rng = np.random.default_rng(0)
  params = torch.as_tensor(rng.standard_normal(N))
  expected_state = [x.clone() for x in leaves]
  state = [x.clone() for x in leaves]
  for _ in range(STEPS):
    g = torch.as_tensor(rng.standard_normal(N) * (rng.random(N) > 0.3))
    expected = program(g, *expected_state, params, foreach=False)
    expected_state = [torch.as_tensor(x).clone() for x in expected[1:]]
    results = run(_segments(g), *state, _segments(params))
    assert all(r is s for r, s in zip(results[1:], state)), 'results land in their inputs'
    for actual, wanted in zip(results, expected):
      np.testing.assert_allclose(actual.numpy(), torch.as_tensor(wanted).numpy(),
                                 rtol=1e-12, atol=1e-300)
    params = params + torch.as_tensor(expected[0])


def _planned(fn, *specs, donated=(), aliases=None, segmented=()):
  return jax2torch.lower(fn, *specs).in_place(donated, aliases, segmented)


def test_swapped_results_are_copied_without_overwriting_each_other():
  spec = jax.ShapeDtypeStruct((4,), jnp.float32)
  run = _planned(lambda a, b: (b, a), spec, spec, donated=(0, 1), aliases={0: 0, 1: 1})
  a, b = torch.arange(4.0), torch.arange(4.0) + 10
  new_a, new_b = run(a, b)
  assert new_a is a and new_b is b
  assert torch.equal(a, torch.arange(4.0) + 10) and torch.equal(b, torch.arange(4.0))


def test_a_segmented_input_can_be_a_result():
  spec = jax.ShapeDtypeStruct((6,), jnp.float32)
  run = _planned(lambda g, s: (2 * g, g), spec, spec, donated=(1,), aliases={1: 1},
                 segmented=(0,))
  g, s = torch.arange(6.0), torch.zeros(6)
  doubled, kept = run(list(g.split([2, 4])), s)
  assert kept is s and torch.equal(s, g) and torch.equal(doubled, 2 * g)


def test_a_result_equal_to_an_operand_is_not_written_through():
  spec = jax.ShapeDtypeStruct((5,), jnp.float32)
  # x ** 1 is x itself in the primitive table; writing 3 * (x ** 1) in place must not reach x.
  run = _planned(lambda x: (3 * jax.lax.integer_pow(x, 1) + x,), spec)
  x = torch.arange(5.0)
  (result,) = run(x)
  assert torch.equal(x, torch.arange(5.0)) and torch.equal(result, 4 * torch.arange(5.0))


def test_a_constant_result_fills_its_input():
  spec = jax.ShapeDtypeStruct((), jnp.float32)
  run = _planned(lambda s: (s + 1, 0.0), spec, donated=(0,), aliases={1: 0})
  s = torch.tensor(5.0)
  increment, zero = run(s)
  assert zero is s and s.item() == 0.0 and increment.item() == 6.0


def test_an_aliased_input_must_be_donated():
  spec = jax.ShapeDtypeStruct((3,), jnp.float32)
  with pytest.raises(ValueError, match='donated'):
    _planned(lambda s: (s + 1,), spec, aliases={0: 0})


def test_inputs_not_donated_are_never_written():
  spec = jax.ShapeDtypeStruct((8,), jnp.float32)
  run = _planned(lambda a, b: (jnp.sqrt(a * b) + a, a - b), spec, spec)
  a, b = torch.arange(1.0, 9.0), torch.arange(2.0, 10.0)
  run(a, b)
  assert torch.equal(a, torch.arange(1.0, 9.0)) and torch.equal(b, torch.arange(2.0, 10.0))


def test_traced_batches_never_read_through_a_view_to_its_base():
  """Under make_fx (as compile=True traces), operands that tile a flat buffer are not read flat.

  The buffer behind the views is not an input of the traced function: a
  graph reading it held a stale tensor, which Inductor's code then read.
  """
  from torch.fx.experimental.proxy_tensor import make_fx  # pylint: disable=import-outside-toplevel
  specs = [jax.ShapeDtypeStruct((3,), jnp.float32), jax.ShapeDtypeStruct((5,), jnp.float32)]
  program = jax2torch.lower(lambda xs: [jnp.where(x > 0, x, 2 * x) for x in xs], specs)
  flat = torch.arange(-4.0, 4.0)
  views = list(flat.split([3, 5]))
  eager = program(*views)
  graph = make_fx(lambda a, b: program(a, b))(*views)
  constants = [getattr(graph, n.target) for n in graph.graph.nodes if n.op == 'get_attr']
  assert all(c.numel() == 1 for c in constants), graph.code  # literals only, never the buffer
  for traced, expected in zip(graph(*views), eager):
    assert torch.equal(traced, expected)
