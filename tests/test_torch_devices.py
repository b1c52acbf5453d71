"""The torch bridge on devices the installed jaxlib has no backend for.

The package installs a CPU-only jaxlib, so CUDA parameters run the lowered
program (torch on the GPU) and JAX only traces. Whatever would hand a CUDA
tensor to the JAX runtime must then either copy through host memory
(``optax_state``) or fail with one clear error saying what to do
(``executor='jax'``, a chain with a primitive the lowering lacks), instead of
XLA's ``Unknown backend cuda``. There is no GPU here: CUDA tensors are
FakeTensorMode's fake ones, in a subprocess (as in test_torch_native), and
host copies are checked on real CPU tensors with the backend check patched.
"""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from expectigrad.bridges import torch as bridge
from tests import fake_cuda



def _has_gpu_backend() -> bool:
  return any(d.platform == 'gpu' for d in jax.devices())


def test_backend_check_follows_jaxlib():
  """CPU always has a JAX backend; CUDA exactly when the jaxlib has a GPU platform."""
  assert bridge.jax_runs_on(torch.device('cpu'))
  try:
    gpu = bool(jax.devices('gpu'))
  except RuntimeError:
    gpu = False
  assert bridge.jax_runs_on(torch.device('cuda')) == gpu


def _stepped(n_steps: int = 3) -> tuple[bridge.Optimizer, list[torch.Tensor]]:
  """Adam through the bridge on CPU, a few steps."""
  params = [torch.nn.Parameter(torch.linspace(-1, 1, 6).reshape(2, 3)),
            torch.nn.Parameter(torch.ones(4))]
  opt = bridge.Optimizer(params, optax.adam(0.1), executor='torch')
  for step in range(n_steps):
    for p in params:
      p.grad = torch.full_like(p, step + 1.0)
    opt.step()
  return opt, params


@pytest.mark.parametrize('backend', [True, False], ids=['zero-copy', 'host-copy'])
def test_optax_state_copies_where_jax_has_no_backend(backend: bool, monkeypatch):
  """``optax_state`` equals the state optax computes in JAX; its leaves share
  memory with ``optimizer.state`` where JAX has a backend for the device, and
  are host copies where it has not (the tensors are CPU here; the check says
  'no backend', as for CUDA with a CPU-only jaxlib)."""
  monkeypatch.setattr(bridge, 'jax_runs_on', lambda device: backend)
  opt, params = _stepped()
  tree = {f'{i:06d}': jnp.asarray(p.detach().numpy()) for i, p in enumerate(params)}
  adam = optax.adam(0.1)
  expected = adam.init(tree)
  for step in range(3):
    _, expected = adam.update(jax.tree.map(lambda x: jnp.full_like(x, step + 1.0), tree),
                              expected)
  state = opt.optax_state()
  assert jax.tree.structure(state) == jax.tree.structure(expected)
  for actual, wanted in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(wanted), rtol=1e-6)
  mu = opt.state[params[0]]['0.mu']
  mu.add_(1.0)  # visible through a shared buffer only
  assert np.array_equal(np.asarray(state[0].mu['000000']), mu.numpy()) == backend


_FAKE_CUDA_SCRIPT = textwrap.dedent('''
    import warnings
    import jax
    import jax.numpy as jnp
    import optax
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from expectigrad.bridges import torch as bridge

    def params():
      return [torch.nn.Parameter(torch.ones(4, 3, device='cuda')),
              torch.nn.Parameter(torch.zeros(4, device='cuda'))]

    def step(opt, ps):
      for p in ps:
        p.grad = torch.ones_like(p)
      opt.step()

    def expect(error, text, make):
      try:
        make()
      except error as raised:
        assert text in str(raised), str(raised)
        assert 'Unknown backend' not in str(raised), str(raised)
        return
      raise AssertionError(f'no {error.__name__}')

    # A primitive the lowering lacks (cumsum): on CPU it would fall back to JAX.
    cumulative = optax.GradientTransformation(
        lambda p: optax.EmptyState(),
        lambda g, s, p=None: (jax.tree.map(lambda x: -jnp.cumsum(x), g), s))

    warnings.simplefilter('error', RuntimeWarning)  # a fallback warning fails the script
    with FakeTensorMode():
      try:  # no random init: a CPU-only build cannot run CUDA random kernels, even faked
        ps = params()
      except Exception as error:  # noqa: BLE001
        print('FAKE_CUDA_UNAVAILABLE', type(error).__name__, error)
        raise SystemExit(0)
      expect(RuntimeError, 'pip install -U "jax[cuda12]"',
             lambda: step(bridge.Optimizer(ps, optax.adam(0.1), executor='jax'), ps))
      ps = params()
      expect(NotImplementedError, 'cumsum',
             lambda: step(bridge.Optimizer(ps, cumulative, executor='torch'), ps))
      ps = params()
      opt = bridge.Optimizer(ps, optax.adam(0.1), executor='torch')
      step(opt, ps)
      # optax_state hands JAX host copies: record what reaches from_dlpack.
      devices = []
      def from_dlpack(tensor):
        devices.append(tensor.device.type)
        return jnp.zeros(tuple(tensor.shape), str(tensor.dtype).removeprefix('torch.'))
      jax.dlpack.from_dlpack = from_dlpack
      state = opt.optax_state()
      assert devices and set(devices) == {'cpu'}, devices
      assert {v.device.type for p in ps for v in opt.state[p].values()} == {'cuda'}
      assert len(jax.tree.leaves(state)) == len(devices)
    print('FAKE_CUDA_OK')
''')


@pytest.mark.skipif(_has_gpu_backend(), reason='this jaxlib has a GPU backend')
def test_fake_cuda_errors_and_host_copies():
  """With fake CUDA parameters and the CPU-only jaxlib: ``executor='jax'``
  raises RuntimeError saying what to install at the first step; a chain with
  a primitive the lowering lacks raises NotImplementedError naming it (no
  fallback warning, no ``Unknown backend``); the lowered program steps, and
  ``optax_state`` hands JAX only CPU copies, leaving the state on CUDA."""
  fake_cuda.run(_FAKE_CUDA_SCRIPT, 'FAKE_CUDA_OK')
