"""The torch optimizer and Keras on the torch backend on a real CUDA device (skipped without one).

Run by benchmarks/gpu_check.sh on a GPU machine. What the fake-CUDA model
(tests/test_torch_gpu_model.py) predicts, checked for real: every torch path
matches the numpy reference in float64 and the CPU in float32, a step after
the first makes no host-device synchronisation (``torch.cuda.set_sync_debug_mode``),
and a step's transient memory stays within twice the parameters' bytes.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import expectigrad
from expectigrad.bridges.torch import Optimizer
from expectigrad.pytorch import Expectigrad
from tests import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

PATHS = {
    'default': lambda ps, **h: Expectigrad(ps, **h),
    'compile=True': lambda ps, **h: Optimizer(ps, expectigrad.expectigrad, compile=True, **h),
    'torch.compile(step)': lambda ps, **h: Expectigrad(ps, **h),
}


def _stepper(path, opt):
  return torch.compile(opt.step) if path == 'torch.compile(step)' else opt.step


@pytest.mark.parametrize('path', list(PATHS))
@pytest.mark.parametrize('beta,sparse_counter', reference.CONFIGS)
def test_quadratic_matches_the_reference_in_float64(path, beta, sparse_counter):
  hyper = dict(lr=reference.QUADRATIC_LR, beta=beta, eps=reference.QUADRATIC_EPS,
               sparse_counter=sparse_counter)
  steps = 200
  expected = reference.run_reference(steps=steps, **hyper)
  x = torch.nn.Parameter(torch.tensor(reference.QUADRATIC_X0, dtype=torch.float64, device='cuda'))
  opt = PATHS[path]([x], **hyper)
  step = _stepper(path, opt)
  trajectory = [x.detach().cpu().numpy().copy()]
  for t in range(1, steps + 1):
    grad = reference.alternating_quadratic_grad(trajectory[-1], t)
    x.grad = torch.from_numpy(grad).to('cuda')
    step()
    trajectory.append(x.detach().cpu().numpy().copy())
  assert reference.max_relative_error(np.stack(trajectory), expected) < 1e-10


def _mlp(device):
  torch.manual_seed(0)
  return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(),
                             torch.nn.Linear(8 * 6 * 6, 10)).to(device)


@pytest.mark.parametrize('path', list(PATHS))
def test_float32_steps_match_the_cpu(path):
  runs = {}
  for device in ('cpu', 'cuda'):
    model = _mlp(device)
    opt = PATHS[path](list(model.parameters()), lr=1e-2)
    step = _stepper(path, opt)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
      opt.zero_grad()
      x = torch.randn(4, 3, 8, 8, generator=generator).to(device)
      model(x).square().mean().backward()
      step()
    runs[device] = [p.detach().cpu() for p in model.parameters()]
  for a, b in zip(runs['cpu'], runs['cuda']):
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('path', list(PATHS))
def test_steps_after_the_first_make_no_host_sync(path):
  model = _mlp('cuda')
  opt = PATHS[path](list(model.parameters()), lr=1e-2)
  step = _stepper(path, opt)
  for p in model.parameters():
    p.grad = torch.randn_like(p)
  step()
  step()
  torch.cuda.synchronize()
  torch.cuda.set_sync_debug_mode('error')
  try:
    for _ in range(3):
      step()
  finally:
    torch.cuda.set_sync_debug_mode('default')


def test_default_step_transient_memory_is_at_most_twice_the_parameters():
  shapes = [(64, 3, 7, 7), (64,), (128, 64, 3, 3), (128,), (256, 128, 3, 3), (1000, 256), (1000,)]
  params = [torch.nn.Parameter(torch.randn(s, device='cuda')) for s in shapes]
  for p in params:
    p.grad = torch.randn_like(p)
  opt = Expectigrad(params, lr=1e-3)
  opt.step()
  opt.step()
  torch.cuda.synchronize()
  before = torch.cuda.memory_allocated()
  torch.cuda.reset_peak_memory_stats()
  opt.step()
  torch.cuda.synchronize()
  transient = torch.cuda.max_memory_allocated() - before
  param_bytes = sum(p.numel() * p.element_size() for p in params)
  # The caching allocator rounds each block up to 512 bytes (2 MiB segments): a little slack.
  assert transient <= 2 * param_bytes + 8 * 2**20, (transient, param_bytes)


def test_optax_chains_with_loops_and_reductions_run_on_cuda():
  """Chains the flat executor does not take (muon's scan, adafactor's factored statistics)."""
  import optax  # pylint: disable=import-outside-toplevel
  for transform in (optax.contrib.muon(1e-2), optax.adafactor(1e-2)):
    runs = {}
    for device in ('cpu', 'cuda'):
      model = _mlp(device)
      opt = Optimizer(list(model.parameters()), transform, executor='torch')
      for p in model.parameters():
        p.grad = torch.ones_like(p)
      opt.step()
      runs[device] = [p.detach().cpu() for p in model.parameters()]
    for a, b in zip(runs['cpu'], runs['cuda']):
      torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


_KERAS = '''
import numpy as np, keras, torch
from expectigrad.tensorflow2 import Expectigrad
from tests import reference
hyper = dict(beta=0.9, sparse_counter=True)
expected = reference.run_reference(steps=200, lr=reference.QUADRATIC_LR, eps=reference.QUADRATIC_EPS, **hyper)
x = keras.Variable(reference.QUADRATIC_X0, dtype='float64')
assert x.value.device.type == 'cuda', x.value.device
opt = Expectigrad(reference.QUADRATIC_LR, epsilon=reference.QUADRATIC_EPS, **hyper)
trajectory = [x.value.detach().cpu().numpy().copy()]
for t in range(1, 201):
  grad = reference.alternating_quadratic_grad(trajectory[-1], t)
  opt.apply([torch.from_numpy(grad).cuda()], [x])
  trajectory.append(x.value.detach().cpu().numpy().copy())
error = reference.max_relative_error(np.stack(trajectory), expected)
assert error < 1e-10, error
model = keras.Sequential([keras.layers.Dense(16, activation='relu'), keras.layers.Dense(1)])
model.compile(optimizer=Expectigrad(1e-2), loss='mse')
history = model.fit(np.random.rand(256, 8), np.random.rand(256, 1), epochs=3, verbose=0)
assert history.history['loss'][-1] < history.history['loss'][0]
print('ok')
'''


def test_keras_on_the_torch_backend_matches_the_reference_on_cuda():
  pytest.importorskip('keras')
  env = {**os.environ, 'KERAS_BACKEND': 'torch'}
  done = subprocess.run([sys.executable, '-c', _KERAS], env=env, capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert done.returncode == 0 and done.stdout.strip().endswith('ok'), done.stderr[-3000:]
