"""bfloat16/float16 torch parameters: float32 optimizer state, exact past 2**11 steps, kept on load."""

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from expectigrad.pytorch import Expectigrad  # noqa: E402
from tests import reference  # noqa: E402

STEPS = 3000


# Every test runs on both CPU paths of the default executor (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('torch_cpu_path')


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_state_is_float32_and_follows_the_reference_past_2048_steps(dtype):
  x = torch.zeros(2, dtype=dtype, requires_grad=True)
  opt = Expectigrad([x], lr=1e-3, beta=0.9, eps=1e-8)
  grads = np.stack([np.where(np.arange(STEPS) % 3 == 0, 0.0, 0.25),
                    np.full(STEPS, -0.5)], axis=1)  # both exactly representable in 8 bits
  ref = reference.ExpectigradReference(np.zeros(2), lr=1e-3, beta=0.9, eps=1e-8)
  for g in grads:
    x.grad = torch.as_tensor(g, dtype=dtype)
    opt.step()
    ref.step(g)
  assert x.dtype == dtype
  state = opt.state_dict()['state'][0]
  assert state['0.sum_of_squares'].dtype == torch.float32
  assert state['1.momentum'].dtype == torch.float32
  np.testing.assert_array_equal(state['0.nonzero_count'].numpy(), [2000, 3000])
  assert int(state['0.count']) == STEPS
  # float16 would have stopped the sums at 2048 steps' worth; float32 is exact here.
  np.testing.assert_array_equal(state['0.sum_of_squares'].numpy(), ref.s)
  np.testing.assert_allclose(state['1.momentum'].numpy(), ref.m, rtol=1e-5)

  restored = Expectigrad([torch.zeros(2, dtype=dtype, requires_grad=True)], lr=1e-3)
  restored.load_state_dict(torch.load(_saved(opt), weights_only=True))
  assert restored.state_dict()['state'][0]['0.sum_of_squares'].dtype == torch.float32


def _saved(opt):
  import io
  buffer = io.BytesIO()
  torch.save(opt.state_dict(), buffer)
  buffer.seek(0)
  return buffer
