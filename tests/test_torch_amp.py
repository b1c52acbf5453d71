"""torch.amp.GradScaler: inf steps are skipped with the state untouched; finite steps are exact."""

import pytest

torch = pytest.importorskip('torch')

from expectigrad.pytorch import Expectigrad  # noqa: E402


# Every test runs on both CPU paths of the default executor (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('torch_cpu_path')


def _setup():
  torch.manual_seed(0)
  model = torch.nn.Linear(4, 2)
  return model, Expectigrad(model.parameters(), lr=0.01), torch.randn(8, 4)


def _snapshot(model, optimizer):
  return ([p.detach().clone() for p in model.parameters()],
          {k: {n: t.clone() for n, t in v.items()} for k, v in optimizer.state_dict()['state'].items()})


def _assert_same(a, b):
  for x, y in zip(a[0], b[0]):
    torch.testing.assert_close(x, y, rtol=0, atol=0)
  assert a[1].keys() == b[1].keys()
  for k in a[1]:
    for name in a[1][k]:
      torch.testing.assert_close(a[1][k][name], b[1][k][name], rtol=0, atol=0)


def test_grad_scaler_skips_inf_steps_and_leaves_state_untouched():
  model, optimizer, inputs = _setup()
  scaler = torch.amp.GradScaler('cpu', init_scale=2.0**10)
  for _ in range(3):  # some finite steps first, so there is state to protect
    optimizer.zero_grad()
    scaler.scale(model(inputs).square().mean()).backward()
    scaler.step(optimizer)
    scaler.update()
  before = _snapshot(model, optimizer)
  optimizer.zero_grad()
  scaler.scale(model(inputs).square().mean()).backward()
  model.weight.grad[0, 0] = float('inf')
  scale = scaler.get_scale()
  scaler.step(optimizer)
  scaler.update()
  _assert_same(_snapshot(model, optimizer), before)
  assert scaler.get_scale() == scale / 2  # the scaler saw the inf and backed off


def test_grad_scaler_finite_step_equals_unscaled_step():
  scaled_model, scaled_opt, inputs = _setup()
  plain_model, plain_opt, _ = _setup()
  scaler = torch.amp.GradScaler('cpu', init_scale=2.0**8)  # a power of 2: unscaling is exact
  for _ in range(5):
    scaled_opt.zero_grad()
    scaler.scale(scaled_model(inputs).square().mean()).backward()
    scaler.step(scaled_opt)
    scaler.update()
    plain_opt.zero_grad()
    plain_model(inputs).square().mean().backward()
    plain_opt.step()
  _assert_same(_snapshot(scaled_model, scaled_opt), _snapshot(plain_model, plain_opt))
