"""Non-finite gradients in torch follow the project policy (see test_jax_nonfinite.py)."""

import numpy as np
import optax
import pytest

torch = pytest.importorskip('torch')

import expectigrad  # noqa: E402
from expectigrad.bridges.torch import Optimizer  # noqa: E402
from expectigrad.pytorch import Expectigrad  # noqa: E402
from tests import reference  # noqa: E402


# Every test runs on both CPU paths of the default executor (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('torch_cpu_path')


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_default_propagates_only_into_the_affected_element(bad):
  grads = np.random.default_rng(0).normal(size=(10, 4))
  grads[5, 2] = bad
  x = torch.ones(4, dtype=torch.float64, requires_grad=True)
  opt = Expectigrad([x], lr=0.1)
  for g in grads:
    x.grad = torch.tensor(g)
    opt.step()
  expected = reference.run_reference(lambda x, t: grads[t - 1], np.ones(4), 10, lr=0.1, beta=0.9,
                                     eps=1e-8)[-1]
  got = x.detach().numpy()
  assert np.isnan(got[2])
  assert reference.max_relative_error(got[[0, 1, 3]], expected[[0, 1, 3]]) < 1e-10


def test_apply_if_finite_chain_skips_the_step_and_leaves_state_untouched():
  x = torch.ones(3, requires_grad=True)
  opt = Optimizer([x], optax.apply_if_finite(expectigrad.expectigrad(0.1), max_consecutive_errors=1000))
  x.grad = torch.tensor([1.0, -2.0, 0.5])
  opt.step()
  params, state = x.detach().clone(), opt.state_dict()['state'][0]
  x.grad = torch.tensor([1.0, float('inf'), 0.5])
  opt.step()
  torch.testing.assert_close(x.detach(), params, rtol=0, atol=0)
  after = opt.state_dict()['state'][0]
  for name, value in state.items():
    if 'inner_state' in name:
      torch.testing.assert_close(after[name], value, rtol=0, atol=0)
  assert int(after['total_notfinite']) == 1
