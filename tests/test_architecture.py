"""The worked examples of docs/architecture.md: a transform, a framework and a primitive added.

- A transform added here (:func:`toy`, a chain with per-parameter and shared
  state) runs unchanged in every bridge registered in
  :data:`expectigrad.bridges.ADAPTERS` (torch on both executors, TF1, Keras on
  every backend of :data:`expectigrad.bridges.KERAS_BACKENDS`) and matches optax.
- A framework added here (:class:`NumpyOptimizer`, numpy arrays) is one small
  adapter over the chain core.
- A primitive added to :data:`expectigrad.jax2torch.PRIMITIVES` (``cbrt``)
  lowers and runs, in a program and in the torch bridge.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from expectigrad import bridges, hyperparameters
from expectigrad.bridges import _conventions

ROOT = pathlib.Path(__file__).resolve().parents[1]
X0 = [1.0, -2.0, 0.5]
GRADIENTS = [[0.5, 0.0, -1.0], [-0.25, 2.0, -1.0], [1.0, 1.0, 0.0]]
LEARNING_RATE = 0.1


# -- a transform ----------------------------------------------------------------------------


class SignTraceState(NamedTuple):
  count: jax.Array  # shared by all parameters: a bridge keeps one
  trace: Any        # one per parameter: a bridge keeps it with its parameter


def scale_by_sign_trace(decay: float = 0.5) -> optax.GradientTransformation:
  """A toy transform: a decaying trace of the gradients' signs, divided by the step count."""

  def init(params):
    return SignTraceState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    del params
    trace = jax.tree.map(lambda t, g: decay * t + jnp.sign(g), state.trace, updates)
    count = state.count + 1
    return jax.tree.map(lambda t: t / count.astype(t.dtype), trace), SignTraceState(count, trace)

  return optax.GradientTransformation(init, update)


def toy(learning_rate) -> optax.GradientTransformation:
  """The factory every bridge takes: called with the framework's current learning rate."""
  return optax.chain(scale_by_sign_trace(), optax.scale_by_learning_rate(learning_rate))


def _optax_result() -> np.ndarray:
  x = jnp.asarray(X0, jnp.float32)
  opt = toy(LEARNING_RATE)
  state = opt.init(x)
  for g in GRADIENTS:
    updates, state = opt.update(jnp.asarray(g, jnp.float32), state, x)
    x = optax.apply_updates(x, updates)
  return np.asarray(x)


def _torch(executor: str) -> tuple[np.ndarray, set]:
  torch = pytest.importorskip('torch')
  from expectigrad.bridges import torch as torch_bridge  # pylint: disable=import-outside-toplevel
  x = torch.tensor(X0, requires_grad=True)
  opt = torch_bridge.Optimizer([x], toy, lr=LEARNING_RATE, executor=executor)
  for g in GRADIENTS:
    x.grad = torch.tensor(g)
    opt.step()
  return x.detach().numpy(), set(opt.state[x])


def _tf1() -> tuple[np.ndarray, set]:
  tf = pytest.importorskip('tensorflow')
  from expectigrad.bridges import tf1  # pylint: disable=import-outside-toplevel
  x = tf.Variable(X0, dtype=tf.float32)
  opt = tf1.Optimizer(toy, learning_rate=LEARNING_RATE)
  for g in GRADIENTS:
    opt.apply_gradients([(tf.constant(g), x)])
  return x.numpy(), set(opt.get_slot_names())


# Run in a fresh process per backend: Keras fixes its backend at import.
_KERAS_PROGRAM = '''
import json, numpy as np, keras
from expectigrad.bridges import keras as bridge
from tests.test_architecture import toy, X0, GRADIENTS, LEARNING_RATE
x = keras.Variable(np.array(X0, np.float32), name='x')
opt = bridge.Optimizer(toy, learning_rate=LEARNING_RATE)
for g in GRADIENTS:
  opt.apply_gradients([(keras.ops.convert_to_tensor(np.array(g, np.float32)), x)])
print(json.dumps({'x': keras.ops.convert_to_numpy(x).tolist(),
                  'names': sorted(v.name for v in opt.variables)}))
'''


def _keras(backend: str) -> tuple[np.ndarray, set]:
  pytest.importorskip('keras')
  if importlib.util.find_spec({'tensorflow': 'tensorflow'}.get(backend, backend)) is None:
    pytest.skip(f'{backend} is not installed')
  env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL='3')
  out = subprocess.run([sys.executable, '-c', _KERAS_PROGRAM], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  return np.asarray(result['x']), set(result['names'])


# One way of running the toy per registered adapter, with the state names it shows.
RUNS = {
    'torch': [('torch', lambda: _torch('torch'), {'0.count', '0.trace'}),
              ('jax', lambda: _torch('jax'), {'0.count', '0.trace'})],
    'tf1': [('eager', _tf1, {'trace'})],
    'keras': [(backend, lambda backend=backend: _keras(backend), {'count', 'x_trace'})
              for backend in bridges.KERAS_BACKENDS],
}


def test_every_registered_adapter_has_a_worked_run():
  assert set(RUNS) == set(bridges.ADAPTERS)
  assert hyperparameters.FRAMEWORKS == ('jax', *bridges.ADAPTERS)


@pytest.mark.parametrize('framework,run,names', [
    pytest.param(framework, run, names, id=f'{framework}-{how}')
    for framework, runs in RUNS.items() for how, run, names in runs])
def test_a_transform_added_here_runs_in_every_bridge(framework, run, names):
  del framework
  x, state_names = run()
  np.testing.assert_allclose(x, _optax_result(), rtol=1e-6)
  assert names <= state_names, state_names


# -- a framework ----------------------------------------------------------------------------


class NumpyOptimizer:
  """A toy framework's bridge: numpy arrays, updated in place, over the chain core.

  The chain core traces, names and runs the chain; this is only numpy's side:
  where the state lives (numpy arrays) and how a result is written (in place).
  """

  def __init__(self, transform: _conventions.TransformOrFactory, learning_rate: float):
    self._transform = _conventions.check_transform(transform)
    self._learning_rate = learning_rate
    self._chain: _conventions.Chain | None = None
    self.state: dict[str, np.ndarray] = {}

  def step(self, params: dict[str, np.ndarray], gradients: dict[str, np.ndarray]) -> None:
    """One step over every array of ``params`` (each updated in place)."""
    names = list(params)
    if self._chain is None:
      for name in names:
        _conventions.check_floating(f"array '{name}'", params[name].dtype)
      specs = [jax.ShapeDtypeStruct(params[n].shape, params[n].dtype) for n in names]
      self._chain = _conventions.Chain(self._transform, names, specs)
      self._leaves = self._chain.state_leaves()
      self._update = jax.jit(self._chain.update)
      initial = self._chain.init([params[n] for n in names])
      self.state = {(leaf.name if leaf.owner is None else f'{names[leaf.owner]}_{leaf.name}'):
                    np.array(value) for leaf, value in zip(self._leaves, initial)}
    arrays = [params[n] for n in names]
    state = list(self.state.values())
    with self._chain.x64():
      new_params, new_state = self._update(arrays, [gradients[n] for n in names], state,
                                           np.asarray(self._learning_rate, np.float32))

    def write(target: np.ndarray, value: Any) -> None:
      target[...] = value
    _conventions.assign_unfrozen(write, self._leaves, arrays, new_params, state, new_state)


def test_a_framework_added_here_is_one_adapter_over_the_chain_core():
  x = np.array(X0, np.float32)
  opt = NumpyOptimizer(toy, LEARNING_RATE)
  for g in GRADIENTS:
    opt.step({'x': x}, {'x': np.array(g, np.float32)})
  np.testing.assert_allclose(x, _optax_result(), rtol=1e-6)
  assert set(opt.state) == {'count', 'x_trace'}


# -- a primitive ----------------------------------------------------------------------------


def _cbrt(x, **params):
  """``lax.cbrt`` in torch: the real cube root, sign kept."""
  import torch  # pylint: disable=import-outside-toplevel
  del params  # cbrt's only parameter is its accuracy hint
  return torch.sign(x) * torch.abs(x) ** (1.0 / 3.0)


def test_a_primitive_added_to_the_table_lowers_and_runs(monkeypatch):
  torch = pytest.importorskip('torch')
  from expectigrad import jax2torch  # pylint: disable=import-outside-toplevel
  spec = jax.ShapeDtypeStruct((3,), jnp.float32)
  assert 'cbrt' in jax2torch.lower(jnp.cbrt, spec).unsupported
  monkeypatch.setitem(jax2torch.PRIMITIVES, 'cbrt', _cbrt)
  program = jax2torch.lower(jnp.cbrt, spec)
  assert not program.unsupported
  x = np.array([8.0, -27.0, 0.125], np.float32)
  (result,) = program(torch.tensor(x))
  np.testing.assert_allclose(result.numpy(), np.cbrt(x), rtol=1e-6)

  # And in the torch bridge: a chain using it runs on the lowered program, without falling back.
  from expectigrad.bridges import torch as torch_bridge  # pylint: disable=import-outside-toplevel
  cube_root = optax.GradientTransformation(
      lambda params: optax.EmptyState(),
      lambda updates, state, params=None: (jax.tree.map(jnp.cbrt, updates), state))
  p = torch.tensor(X0, requires_grad=True)
  opt = torch_bridge.Optimizer([p], optax.chain(cube_root, optax.sgd(1.0)), executor='torch')
  p.grad = torch.tensor(x)
  with warnings.catch_warnings():
    warnings.simplefilter('error', RuntimeWarning)  # the fallback to the JAX runtime warns
    opt.step()
  np.testing.assert_allclose(p.detach().numpy(), np.array(X0) - np.cbrt(x), rtol=1e-6)
