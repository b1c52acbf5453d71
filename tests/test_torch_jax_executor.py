"""The torch optimizer's JAX executor (the CPU default) and its scaled updates.

Where every update is a scalar times a new state leaf (found in the traced
program by ``expectigrad.bridges._scaled_update``), the executor adds
``scale * leaf`` to the parameters and keeps nothing beyond the state. The
tests check the rewrite against the program it rewrites, the steps against
independent numpy references in float64, and the memory kept between steps.
"""

from __future__ import annotations

import gc

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import expectigrad
from expectigrad.bridges import _scaled_update, _torch_chain
from expectigrad.bridges import torch as bridge
from expectigrad.pytorch import Expectigrad
from tests import reference

SHAPES = [(4, 3, 2, 2), (5,), (), (3, 7)]
STEPS = 12


def _traced(transform: optax.GradientTransformation, shapes=SHAPES):
  """``transform``'s update traced as the torch bridge traces it (float64)."""
  chain = _torch_chain.LoweredChain(lambda hyper: transform, (), shapes,
                                    [torch.float64] * len(shapes), torch.device('cpu'))
  return chain.traced, len(shapes)


def _run_traced(closed, rng: np.random.Generator):
  """The traced program and its rewrite on the same random inputs."""
  args = [jnp.asarray(rng.standard_normal(v.aval.shape)).astype(v.aval.dtype)
          for v in closed.jaxpr.invars]
  return args, jax_core.jaxpr_as_fun(closed)(*args)


@pytest.mark.parametrize('name,transform,scaled', [
    ('expectigrad', expectigrad.expectigrad(learning_rate=0.1), True),
    ('sgd momentum', optax.sgd(0.1, momentum=0.9), True),
    ('adam', optax.adam(0.1), False),
    ('sgd', optax.sgd(0.1), False),
])
def test_finds_updates_that_are_a_scalar_times_a_state_leaf(name, transform, scaled):
  """Found exactly where the update is a scalar times a state leaf; the rewrite
  returns the same state, and its scales times the leaves are the updates."""
  del name
  with jax.enable_x64(True):
    closed, n = _traced(transform)
    found = _scaled_update.find(closed, n)
    assert (found is not None) == scaled
    if not scaled:
      return
    args, outputs = _run_traced(closed, np.random.default_rng(0))
    scales, state = _scaled_update.program(closed, found)(*args)
    updates, expected_state = outputs[:n], outputs[n:]
    for actual, expected in zip(state, expected_state):
      np.testing.assert_array_equal(actual, expected)
    for s, scale, update in zip(found, scales, updates):
      np.testing.assert_allclose(scale * state[s.leaf], update, rtol=1e-15, atol=0)


def _per_parameter_momentum(factors):
  """SGD momentum whose update is a different constant times each parameter's trace."""
  trace = optax.trace(decay=0.9)

  def update(updates, state, params=None):
    del params
    updates, state = trace.update(updates, state)
    keys = sorted(updates)
    return {k: -factors[i] * updates[k] for i, k in enumerate(keys)}, state

  return optax.GradientTransformation(trace.init, update)


def test_parameters_with_different_scales_step_like_the_reference():
  """Each parameter gets its own scale (one foreach call per distinct value)."""
  factors = [0.1, 0.2, 0.1, 0.05]
  rng = np.random.default_rng(1)
  x0 = [rng.standard_normal(s) for s in SHAPES]
  params = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in x0]
  opt = bridge.Optimizer(params, _per_parameter_momentum(factors), executor='jax')
  xs, ms = [x.copy() for x in x0], [np.zeros(s) for s in SHAPES]
  for _ in range(STEPS):
    grads = [rng.standard_normal(s) for s in SHAPES]
    for p, g in zip(params, grads):
      p.grad = torch.from_numpy(g)
    opt.step()
    for i, g in enumerate(grads):
      ms[i] = 0.9 * ms[i] + g
      xs[i] = xs[i] - factors[i] * ms[i]
  assert all(c.scaled is not None for c in opt._run._jax_chains.values())
  for p, x in zip(params, xs):
    np.testing.assert_allclose(p.detach().numpy(), x, rtol=1e-10, atol=1e-12)


def test_expectigrad_default_matches_the_reference_with_4d_and_0d_parameters():
  """The CPU default (raveled, scaled) follows the numpy reference in float64."""
  rng = np.random.default_rng(2)
  x0 = [rng.standard_normal(s) for s in SHAPES]
  params = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in x0]
  opt = Expectigrad(params, lr=0.05)
  refs = [reference.ExpectigradReference(x.ravel(), lr=0.05) for x in x0]
  for t in range(STEPS):
    for p, ref in zip(params, refs):
      g = np.asarray(rng.standard_normal(p.shape) * (t % 3 != 0))  # zeros: the sparse counter
      p.grad = torch.from_numpy(g)
      ref.step(g.ravel())
    opt.step()
  (chain,) = opt._run._jax_chains.values()
  assert chain.raveled and chain.scaled is not None
  for p, ref in zip(params, refs):
    np.testing.assert_allclose(p.detach().numpy().ravel(), ref.x, rtol=1e-10, atol=0)
    assert opt.state[p]['1.momentum'].shape == p.shape


def _live_bytes() -> int:
  """Bytes of JAX's live buffers (an array exported through dlpack has a second
  Array object over the same buffer: counted once)."""
  gc.collect()
  buffers = {a.unsafe_buffer_pointer(): a.nbytes for a in jax.live_arrays()
             if not a.is_deleted() and a.nbytes}
  return sum(buffers.values())


@pytest.mark.parametrize('make,beyond', [
    (lambda ps: Expectigrad(ps), 0),
    (lambda ps: bridge.Optimizer(ps, optax.adam(1e-3)), 4),
])
def test_memory_kept_between_steps(make, beyond):
  """Between steps the JAX executor keeps the state (views of JAX arrays) and,
  for Expectigrad (scaled), nothing else; for Adam one update array (4 bytes
  per float32 element)."""
  shapes = [(64, 32, 3, 3), (1000,), (300, 20)]
  numel = sum(int(np.prod(s)) for s in shapes)
  params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
  before = _live_bytes()
  opt = make(params)
  for _ in range(3):
    for p in params:
      p.grad = torch.randn_like(p)
    opt.step()
  tensors = {id(t): t for s in opt.state.values() for t in s.values()}  # counts are shared
  state_bytes = sum(t.nbytes for t in tensors.values())
  kept = _live_bytes() - before
  # Every array JAX holds is state torch sees through views, plus the update's where not scaled.
  assert kept == pytest.approx(state_bytes + beyond * numel, abs=64)
  assert state_bytes >= 8 * numel


@pytest.mark.parametrize('make', [lambda ps: Expectigrad(ps),
                                  lambda ps: bridge.Optimizer(ps, optax.adam(1e-3))])
def test_xla_updates_every_donated_array_in_place_without_copies(make):
  """Each new state leaf (and, where not scaled, each update) takes a donated
  buffer, and XLA copies none: parameters of repeated shapes could pair an
  output with another's buffer (updates paired first made XLA copy 124 of
  Adam's 187 arrays on ResNet-18's shapes)."""
  shapes = [(8, 4, 3, 3), (8,), (8, 4, 3, 3), (8,), (20, 8)]
  params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
  opt = make(params)
  for p in params:
    p.grad = torch.randn_like(p)
  opt.step()
  executor = opt._run  # pylint: disable=protected-access
  (chain,) = executor._jax_chains.values()
  (cohort,) = executor._cohorts.values()
  grads = chain.to_jax([p.grad for p in params])
  hyper = chain.hyper({k: 0.1 for k in chain.chain.hyper_names})
  args = (hyper, grads, cohort.state, grads) + ((cohort._spare,) if chain.scaled is None else ())
  text = chain._run.lower(*args).compile().as_text()
  donated = len(cohort.state) + (len(params) if chain.scaled is None else 0)
  assert text.splitlines()[0].count('-alias)') == donated
  assert ' copy(' not in text


@pytest.mark.parametrize('make', [
    lambda ps: Expectigrad(ps, lr=0.05),   # raveled, scaled
    lambda ps: bridge.Optimizer(ps, optax.chain(optax.clip_by_global_norm(100.0),
                                                expectigrad.expectigrad(0.05))),  # as shaped
])
def test_non_contiguous_parameters_and_gradients_step_like_the_reference(make):
  """A transposed parameter and gradient are read through copies and written in place."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((4, 6))
  param = torch.nn.Parameter(torch.from_numpy(x.copy()).t())
  assert not param.is_contiguous()
  opt = make([param])
  ref = reference.ExpectigradReference(x.T.copy(), lr=0.05)
  for _ in range(STEPS):
    g = rng.standard_normal((6, 4))
    param.grad = torch.from_numpy(g.T.copy()).t()
    ref.step(g)
    opt.step()
  np.testing.assert_allclose(param.detach().numpy(), ref.x, rtol=1e-10, atol=0)
