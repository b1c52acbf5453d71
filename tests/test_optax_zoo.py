"""Every optax optimizer that needs only gradients, as a torch optimizer.

Each optax alias and ``optax.contrib`` optimizer below (and one
``optax.MultiSteps``, passed as the wrapper object itself) runs as
``expectigrad.bridges.torch.Optimizer(params, transform, executor='torch')``
-- the lowered torch program, never the JAX runtime -- eagerly and with
``compile=True`` (Inductor), for ``STEPS`` float64 steps on random
gradients over parameters of shapes ``SHAPES`` (a 4-D kernel among them).
The reference is the same optax optimizer run in JAX. Compared, as relative
errors (max |a - b| / max |b|): each parameter's displacement from its
initial value (the part the optimizer wrote; learning-rate-free optimizers
move parameters by 1e-7 in 30 steps) and every leaf of the optax state
(``optimizer.optax_state()``), integer leaves exactly.

docs/pytorch.md lists the same optimizers with the largest error measured
(``python -m tests.test_optax_zoo`` prints that table).
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from optax import contrib

from expectigrad.bridges import torch as bridge

SHAPES = ((3, 2, 3, 3), (5, 4), (4,))
STEPS = 30
TOL = 1e-8
LR = 1e-2
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs',
                    'pytorch.md')

# Name (as docs/pytorch.md spells it, after ``optax.``) -> the optimizer.
ZOO: dict[str, Callable[[], Any]] = {
    'adabelief': lambda: optax.adabelief(LR),
    'adadelta': lambda: optax.adadelta(LR),
    'adafactor': lambda: optax.adafactor(LR),
    'adagrad': lambda: optax.adagrad(LR),
    'adam': lambda: optax.adam(LR),
    'adamax': lambda: optax.adamax(LR),
    'adamaxw': lambda: optax.adamaxw(LR),
    'adamw': lambda: optax.adamw(LR),
    'adan': lambda: optax.adan(LR),
    'amsgrad': lambda: optax.amsgrad(LR),
    'fromage': lambda: optax.fromage(LR),
    'lamb': lambda: optax.lamb(LR),
    'lars': lambda: optax.lars(LR),
    'lion': lambda: optax.lion(LR),
    'nadam': lambda: optax.nadam(LR),
    'nadamw': lambda: optax.nadamw(LR),
    'novograd': lambda: optax.novograd(LR),
    'optimistic_gradient_descent': lambda: optax.optimistic_gradient_descent(LR),
    'optimistic_adam': lambda: optax.optimistic_adam(LR),
    'radam': lambda: optax.radam(LR),
    'rmsprop': lambda: optax.rmsprop(LR),
    'rprop': lambda: optax.rprop(LR),
    'sgd(momentum=0.9)': lambda: optax.sgd(LR, momentum=0.9),
    'sgd(momentum=0.9, nesterov=True)': lambda: optax.sgd(LR, momentum=0.9, nesterov=True),
    'sign_sgd': lambda: optax.sign_sgd(LR),
    'sm3': lambda: optax.sm3(LR),
    'yogi': lambda: optax.yogi(LR),
    'contrib.adopt': lambda: contrib.adopt(LR),
    'contrib.ademamix': lambda: contrib.ademamix(LR),
    'contrib.simplified_ademamix': lambda: contrib.simplified_ademamix(LR),
    'contrib.muon': lambda: contrib.muon(LR),
    'contrib.schedule_free_adamw': lambda: contrib.schedule_free_adamw(LR),
    # Learning-rate free: their default learning rate is 1.
    'contrib.prodigy': contrib.prodigy,
    'contrib.dadapt_adamw': contrib.dadapt_adamw,
    'contrib.cocob': contrib.cocob,
    'contrib.dog': contrib.dog,
    'contrib.dowg': contrib.dowg,
    'contrib.mechanize': lambda: contrib.mechanize(optax.sgd(LR)),
    'contrib.acprop': lambda: contrib.acprop(LR),
    'MultiSteps(adam, every_k_schedule=3)': lambda: optax.MultiSteps(optax.adam(LR), 3),
}

pytestmark = pytest.mark.usefixtures('x64')  # float64 everywhere (tests/conftest.py)

def _key(i: int) -> str:
  return f'{i:06d}'  # the bridge's keys for a group's parameters, in order


@functools.lru_cache(maxsize=None)
def _problem() -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
  """Initial parameters and ``STEPS`` gradient lists (one seed for every optimizer)."""
  rng = np.random.default_rng(0)
  params = [rng.standard_normal(shape) for shape in SHAPES]
  return params, [[rng.standard_normal(shape) for shape in SHAPES] for _ in range(STEPS)]


@functools.lru_cache(maxsize=None)
def _reference(name: str) -> tuple[list[np.ndarray], Any]:
  """Final parameters and state of the optimizer run in JAX (``optax.apply_updates``)."""
  p0, grads = _problem()
  with jax.enable_x64(True):
    optimizer = ZOO[name]()
    params = {_key(i): jnp.asarray(p) for i, p in enumerate(p0)}
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    for g in grads:
      updates, state = update({_key(i): jnp.asarray(x) for i, x in enumerate(g)}, state, params)
      params = optax.apply_updates(params, updates)
    return [np.asarray(params[_key(i)]) for i in range(len(SHAPES))], state


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
  """max |actual - expected| / max |expected|; absolute where ``expected`` is all zero."""
  scale = np.max(np.abs(expected), initial=0.0)
  diff = float(np.max(np.abs(actual - expected), initial=0.0))
  return diff / scale if scale else diff


def measure(name: str, compile: bool, executor: str = 'torch'  # pylint: disable=redefined-builtin
            ) -> float:
  """Runs ``ZOO[name]`` through the torch bridge; returns its largest relative error.

  Args:
    name: the optimizer's key in ``ZOO``.
    compile: run the lowered step compiled by Inductor.
    executor: ``'torch'`` (the lowered program) or ``'jax'`` (the JAX executor).

  Raises:
    AssertionError: if the chain falls back to the JAX runtime, an integer
      state leaf differs, or the state's structure differs from optax's.
  """
  p0, grads = _problem()
  expected_params, expected_state = _reference(name)
  params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in p0]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    opt = bridge.Optimizer(params, ZOO[name](), executor=executor, compile=compile)
    for g in grads:
      for p, x in zip(params, g):
        p.grad = torch.from_numpy(x)
      opt.step()
  fallbacks = [str(w.message) for w in caught if 'JAX runtime' in str(w.message)]
  assert not fallbacks, fallbacks
  assert all(not chain.unsupported for chain in opt._run.lowered)
  errors = [_relative_error(p.detach().numpy() - start, expected - start)
            for p, start, expected in zip(params, p0, expected_params)]
  state = opt.optax_state()
  assert jax.tree.structure(state) == jax.tree.structure(expected_state)
  for actual, expected in zip(jax.tree.leaves(state), jax.tree.leaves(expected_state)):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype
    if actual.dtype.kind == 'f':
      errors.append(_relative_error(actual.astype(np.float64), expected.astype(np.float64)))
    else:
      np.testing.assert_array_equal(actual, expected)
  return max(errors)


_MODES = {'eager': (False, 'torch'), 'compiled': (True, 'torch'), 'jax-executor': (False, 'jax')}


def _cases() -> list:
  return [pytest.param(name, *_MODES[mode], id=f'{name}-{mode}') for name in ZOO for mode in _MODES]


@pytest.mark.parametrize('name,compile,executor', _cases())
def test_optimizer_matches_optax(name: str, compile: bool, executor: str):  # pylint: disable=redefined-builtin
  """The lowered optimizer, eager and compiled by Inductor, and the JAX
  executor (the CPU default) follow optax in JAX for ``STEPS`` float64 steps
  to ``TOL``, state included; the lowered one never runs on the JAX runtime."""
  assert measure(name, compile, executor) <= TOL


def _documented() -> list[str]:
  """The optimizers docs/pytorch.md's zoo table lists, in order."""
  with open(DOCS, encoding='utf-8') as f:
    text = f.read()
  section = text.split('<!-- optax-zoo -->')[1].split('<!-- /optax-zoo -->')[0]
  return re.findall(r'^\| `optax\.(.+?)` \|', section, flags=re.MULTILINE)


def test_docs_table_lists_the_tested_optimizers():
  """docs/pytorch.md's table of optimizers is exactly the list this file runs."""
  assert _documented() == list(ZOO)


def _table_cell(name: str, mode: str) -> tuple[str, str]:
  """(mark, largest relative error) of one run in one of ``_MODES``, for the docs table."""
  try:
    error = measure(name, *_MODES[mode])
  except Exception as failure:  # pylint: disable=broad-except  (the table shows it)
    return '✗', type(failure).__name__
  return ('✓' if error <= TOL else '✗'), f'{error:.1e}'


if __name__ == '__main__':
  # The docs table: one row per optimizer, with the errors measured here.
  with jax.enable_x64(True):
    for zoo_name in ZOO:
      cells = [_table_cell(zoo_name, mode) for mode in _MODES]
      print(f'| `optax.{zoo_name}` | ' + ' | '.join(mark for mark, _ in cells) + ' | '
            + ' | '.join(error for _, error in cells) + ' |', flush=True)
