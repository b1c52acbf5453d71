"""Property tests: the torch bridge matches the numpy reference on random cases (see properties.py)."""

from unittest import mock

import numpy as np
import pytest
from hypothesis import given

torch = pytest.importorskip('torch')

from expectigrad.bridges import _torch_executor  # noqa: E402
from expectigrad.pytorch import Expectigrad  # noqa: E402
from tests import properties  # noqa: E402


def run_torch(case: properties.Case) -> np.ndarray:
  x = torch.tensor(case.initial_params(), requires_grad=True)
  opt = Expectigrad([x], lr=case.lr, beta=case.beta, eps=case.eps, sparse_counter=case.sparse_counter)
  for g in case.gradients():
    x.grad = torch.tensor(g)
    opt.step()
  return x.detach().numpy()


@pytest.mark.parametrize('cpu_path', ['jax', 'torch'])
@given(case=properties.cases)
def test_torch_matches_reference(cpu_path, case):
  """Both CPU paths of the default executor (see ``torch_cpu_path`` in conftest.py)."""
  with mock.patch.object(_torch_executor, 'CPU_DEFAULT', cpu_path):
    properties.check_against_reference(case, run_torch(case))
