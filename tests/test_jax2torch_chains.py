"""jax2torch, optimizer chain by chain, against the same chain run in JAX.

Each chain's ``update(grads, state, params)`` is lowered once and run for
``STEPS`` steps in float64 on random gradients (exact zeros in some steps, so
sparse counters see them), with the updates applied to the parameters in
torch (``p + u``) and in JAX (``optax.apply_updates``). The final parameters
and every state leaf agree to a relative error (max |a - b| / max |b| per
leaf) below ``TOL``; integer and boolean leaves (counters, flags) exactly.
The foreach and one-equation-at-a-time executions of the program agree bit
for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import expectigrad
from expectigrad import jax2torch
from expectigrad import transforms as T

STEPS = 200
TOL = 1e-10
SHAPES = {'w': (3, 4), 'b': (5,), 'k': (2, 3, 3), 's': ()}
LR = 1e-3

pytestmark = pytest.mark.usefixtures('x64')  # float64 everywhere (tests/conftest.py)

# State surgery applied at a given step, identically in both frameworks:
# hook(step, state, array_like) -> state, where array_like(value, old) makes an
# array of the framework (and dtype) of ``old``.
Hook = Callable[[int, Any, Callable[[Any, Any], Any]], Any]


@dataclasses.dataclass(frozen=True)
class Chain:
  """A chain to check.

  Attributes:
    id: the test id.
    make: builds the ``optax.GradientTransformation``.
    nonfinite: put inf/NaN into the gradients of a few steps.
    hook: changes the state between steps (a hyperparameter, say).
    tol: the relative tolerance, ``TOL`` unless the chain computes in float32.
  """
  id: str
  make: Callable[[], optax.GradientTransformation]
  nonfinite: bool = False
  hook: Hook | None = None
  tol: float = TOL


def _jax_array(value, old):
  return jnp.asarray(value, old.dtype)


def _torch_array(value, old):
  return torch.tensor(value, dtype=old.dtype)


def _change_learning_rate(step, state, array_like):
  """Halfway through, an ``inject_hyperparams`` state gets a new learning rate."""
  if step != STEPS // 2:
    return state
  hyper = dict(state.hyperparams)
  hyper['learning_rate'] = array_like(3 * LR, hyper['learning_rate'])
  return state._replace(hyperparams=hyper)


_NONFINITE_STEPS = {30: np.inf, 31: np.nan, 90: -np.inf, 150: np.nan}


def _gradients(rng: np.random.Generator, nonfinite: bool) -> list[dict[str, np.ndarray]]:
  """``STEPS`` random gradient trees; every third step a third of the elements are
  exactly zero; with ``nonfinite``, one element is inf/NaN at ``_NONFINITE_STEPS``
  (at most two steps in a row: ``apply_if_finite(.., 3)`` skips them all)."""
  grads = []
  for step in range(STEPS):
    g = {name: rng.standard_normal(shape) for name, shape in SHAPES.items()}
    if step % 3 == 0:
      g = {name: np.where(rng.random(x.shape) < 1 / 3, 0.0, x) for name, x in g.items()}
    if nonfinite and step in _NONFINITE_STEPS:
      g['w'][1, 2] = _NONFINITE_STEPS[step]
    grads.append(g)
  return grads


def _initial_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
  return {name: np.asarray(rng.standard_normal(shape)) for name, shape in SHAPES.items()}


def _to_torch(tree: Any) -> Any:
  return jax.tree.map(lambda x: torch.from_numpy(np.array(x)), tree)


@dataclasses.dataclass(frozen=True)
class Run:
  """What a trajectory needs besides the update function.

  Attributes:
    params: the initial parameters.
    state: the initial optimizer state.
    grads: one gradient tree per step.
    leading: step -> arguments passed before the gradients at that step.
    hook: state surgery between steps.
  """
  params: Any
  state: Any
  grads: list
  leading: Callable[[int], tuple]
  hook: Hook | None


def run_jax(update: Callable, run: Run):
  """The reference trajectory: ``update`` jitted, ``optax.apply_updates``."""
  update = jax.jit(update)
  params, state = jax.tree.map(jnp.asarray, run.params), run.state
  for step, g in enumerate(run.grads):
    if run.hook is not None:
      state = run.hook(step, state, _jax_array)
    updates, state = update(*run.leading(step), g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def run_torch(program: jax2torch.Program, run: Run, foreach: bool):
  """The lowered trajectory: the program on torch tensors, ``p + u``."""
  params, state = _to_torch(run.params), _to_torch(run.state)
  for step, g in enumerate(run.grads):
    if run.hook is not None:
      state = run.hook(step, state, _torch_array)
    flat = jax.tree.leaves((_to_torch(run.leading(step)), _to_torch(g), state, params))
    updates, state = jax.tree.unflatten(program.out_tree, program(*flat, foreach=foreach))
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return params, state


def assert_trees_close(actual: Any, expected: Any, tol: float = TOL) -> None:
  """Same structure and dtypes; floats to ``tol`` relative, the rest exactly."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    assert a.dtype == jax2torch.torch_dtype(e.dtype)
    a, e = a.numpy(), np.asarray(e)
    if e.dtype.kind != 'f' or not np.isfinite(e).all():
      np.testing.assert_array_equal(a, e, strict=True)
      continue
    scale = np.max(np.abs(e), initial=0.0) or 1.0
    assert np.max(np.abs(a - e), initial=0.0) / scale < tol


def assert_trees_identical(actual: Any, expected: Any) -> None:
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(a.numpy(), e.numpy(), strict=True)


def _no_args(step: int) -> tuple:
  del step
  return ()


def check_chain(update: Callable, init: Callable, *, leading: Callable[[int], tuple] = _no_args,
                nonfinite: bool = False, hook: Hook | None = None, tol: float = TOL) -> None:
  """Runs ``update(*leading(step), grads, state, params)`` from ``init(params)``
  in JAX and lowered to torch (traced once), and compares the trajectories' ends."""
  rng = np.random.default_rng(0)
  params = _initial_params(rng)
  run = Run(params, init(params), _gradients(rng, nonfinite), leading, hook)
  program = jax2torch.lower(update, *leading(0), run.grads[0], run.state, params)
  assert program.unsupported == frozenset()
  expected = run_jax(update, run)
  actual = run_torch(program, run, foreach=True)
  assert_trees_close(actual, expected, tol)
  assert not np.allclose(expected[0]['w'], params['w'])  # the parameters really moved
  assert_trees_identical(run_torch(program, run, foreach=False), actual)


def _with_adam(*transforms: optax.GradientTransformation) -> optax.GradientTransformation:
  return optax.chain(*transforms, optax.adam(LR))


def _adam_with_schedule(schedule: optax.Schedule) -> Callable[[], optax.GradientTransformation]:
  return lambda: optax.adam(schedule)


CHAINS = [
    *(Chain(f'expectigrad-beta{beta}-sparse{sparse}',
            lambda beta=beta, sparse=sparse: expectigrad.expectigrad(
                LR, beta=beta, sparse_counter=sparse))
      for beta in (0.0, 0.9) for sparse in (True, False)),
    # The README's ablation variants.
    Chain('inner-momentum', lambda: optax.chain(
        T.inner_momentum(T.arithmetic_rms(1e-8), 0.9), T.scale_by_lr(LR))),
    Chain('ema-denominator-outer-momentum', lambda: optax.chain(
        T.scale_by_ema_rms(0.999, 1e-8), T.outer_momentum(0.9), T.scale_by_lr(LR))),
    Chain('adam-style', lambda: optax.chain(
        T.inner_momentum(T.ema_rms(0.999, 1e-8), 0.9), T.scale_by_lr(LR))),
    # optax optimizers.
    Chain('adam', lambda: optax.adam(LR)),
    Chain('adamw', lambda: optax.adamw(LR, weight_decay=1e-2)),
    Chain('sgd-momentum', lambda: optax.sgd(1e-2, momentum=0.9)),
    Chain('sgd-nesterov', lambda: optax.sgd(1e-2, momentum=0.9, nesterov=True)),
    Chain('rmsprop', lambda: optax.rmsprop(LR)),
    Chain('adagrad', lambda: optax.adagrad(1e-2)),
    Chain('lion', lambda: optax.lion(1e-4)),
    Chain('adafactor', lambda: optax.adafactor(1e-2)),
    Chain('adafactor-factored', lambda: optax.adafactor(1e-2, min_dim_size_to_factor=2)),
    # Wrappers and gradient transformations, with adam.
    Chain('clip+adam', lambda: _with_adam(optax.clip(1.0))),
    Chain('clip_by_global_norm+adam', lambda: _with_adam(optax.clip_by_global_norm(1.0))),
    Chain('add_decayed_weights+adam', lambda: _with_adam(optax.add_decayed_weights(1e-2))),
    Chain('inject_hyperparams-adam', lambda: optax.inject_hyperparams(optax.adam)(
        learning_rate=LR), hook=_change_learning_rate),
    Chain('apply_if_finite-adam', lambda: optax.apply_if_finite(optax.adam(LR), 3),
          nonfinite=True),
    Chain('multisteps-adam', lambda: optax.MultiSteps(optax.adam(LR), 3).gradient_transformation()),
    # Learning-rate schedules.
    Chain('adam-constant', _adam_with_schedule(optax.constant_schedule(LR))),
    Chain('adam-cosine_decay', _adam_with_schedule(optax.cosine_decay_schedule(1e-2, STEPS))),
    Chain('adam-piecewise_constant', _adam_with_schedule(
        optax.piecewise_constant_schedule(1e-2, {50: 0.5, 120: 0.1}))),
    # These two compute the learning rate in float32 (count / 20.0, 0.9 ** (count / 10.0)),
    # and XLA computes count / 10.0 as count * 0.1f: the rate differs from the lowered
    # division's by a few float32 ulp (3e-7 relative) at some steps, 6e-10 in the end.
    Chain('adam-warmup_cosine_decay', _adam_with_schedule(
        optax.warmup_cosine_decay_schedule(0.0, 1e-2, 20, STEPS)), tol=1e-8),
    Chain('adam-exponential_decay', _adam_with_schedule(optax.exponential_decay(1e-2, 10, 0.9)),
          tol=1e-8),
]


@pytest.mark.parametrize('chain', CHAINS, ids=[c.id for c in CHAINS])
def test_chain_matches_jax(chain: Chain):
  """The chain lowers with no unsupported primitive, and 200 lowered steps end
  where 200 JAX steps do (parameters and state, 1e-10 relative; counters and
  flags exactly), foreach and single-equation execution bit-identical."""
  opt = chain.make()
  check_chain(opt.update, opt.init, nonfinite=chain.nonfinite, hook=chain.hook, tol=chain.tol)


def _hyper(learning_rate: float, beta: float, eps: float) -> dict[str, np.ndarray]:
  """Expectigrad's hyperparameters as 0-d float64 arrays."""
  return {'learning_rate': np.asarray(learning_rate), 'beta': np.asarray(beta),
          'eps': np.asarray(eps)}


_HYPER = [_hyper(1e-3, 0.9, 1e-8), _hyper(5e-4, 0.8, 1e-6), _hyper(2e-3, 0.95, 1e-7)]


def test_traced_hyperparameters_match_jax():
  """Hyperparameters passed as 0-d arrays are traced (program inputs): fed as
  0-d torch tensors whose values change twice during the run, the lowered
  ``expectigrad(**hyper).update`` follows JAX's with the same values."""
  def update(hyper, g, state, params):
    del params
    return expectigrad.expectigrad(**hyper).update(g, state)

  def init(params):
    return expectigrad.expectigrad(**{k: float(v) for k, v in _HYPER[0].items()}).init(params)

  check_chain(update, init, leading=lambda step: (_HYPER[len(_HYPER) * step // STEPS],))
