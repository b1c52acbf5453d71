"""Complex parameters in torch, as torch.optim treats them: pairs of real numbers.

torch.optim.Adam steps a complex parameter through ``torch.view_as_real``:
its real and imaginary parts are two independent real parameters. The
bridge does the same, so a complex parameter moves exactly as its real view
would as a real parameter, and the real view matches the numpy reference.
"""

import pytest

torch = pytest.importorskip('torch')

import expectigrad  # noqa: E402
from expectigrad.bridges.torch import Optimizer  # noqa: E402
from expectigrad.pytorch import Expectigrad  # noqa: E402
from tests import reference  # noqa: E402

pytestmark = pytest.mark.usefixtures('torch_cpu_path')

_STEPS = 200


def _gradient(z: torch.Tensor, t: int) -> torch.Tensor:
  """The gradient torch gives for sum(|z - c|^2 * w), zeroed on some elements and steps."""
  n = z.shape[0]
  c = torch.tensor([1.0 - 2.0j, -0.5 + 0.25j, 0.2 + 3.0j, 0.7 - 0.4j], dtype=z.dtype)[:n]
  w = torch.tensor([1.0, 4.0, 0.5, 2.0], dtype=torch.float64 if z.dtype == torch.complex128
                   else torch.float32)[:n]
  g = 2 * w * (z.detach() - c)
  if t % 2 == 0:
    g[-1] = 0
  return g


@pytest.mark.parametrize('beta,sparse_counter', reference.CONFIGS)
def test_complex128_moves_as_its_real_view_and_matches_the_reference(beta, sparse_counter):
  hyper = dict(lr=0.05, beta=beta, eps=1e-8, sparse_counter=sparse_counter)
  z = torch.tensor([0.3 + 0.1j, -1.0 + 1.0j, 2.0 - 0.5j, 0.5 + 0.5j], dtype=torch.complex128,
                   requires_grad=True)
  real = torch.view_as_real(z.detach()).clone().requires_grad_(True)
  complex_opt, real_opt = Expectigrad([z], **hyper), Expectigrad([real], **hyper)
  ref = reference.ExpectigradReference(torch.view_as_real(z.detach()).numpy().ravel(), **hyper)
  for t in range(1, _STEPS + 1):
    g = _gradient(z, t)
    ref.step(torch.view_as_real(g).numpy().ravel())
    z.grad, real.grad = g, torch.view_as_real(g).clone()
    complex_opt.step()
    real_opt.step()
  assert torch.equal(torch.view_as_real(z.detach()), real.detach())
  assert reference.max_relative_error(torch.view_as_real(z.detach()).numpy().ravel(), ref.x) < 1e-10
  for name, value in complex_opt.state[z].items():
    assert torch.equal(value, real_opt.state[real][name]), name
    assert value.shape in ((), (4, 2)), name


def test_complex64_with_real_parameters_in_one_group_and_a_state_dict_round_trip():
  torch.manual_seed(0)
  z = torch.randn(3, dtype=torch.complex64, requires_grad=True)
  w = torch.randn(5, requires_grad=True)
  opt = Optimizer([z, w], expectigrad.expectigrad, lr=0.01, beta=0.9)
  for t in range(1, 4):
    z.grad, w.grad = _gradient(z, t), torch.ones(5) * t
    opt.step()
  copy_z, copy_w = z.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
  resumed = Optimizer([copy_z, copy_w], expectigrad.expectigrad, lr=0.01, beta=0.9)
  resumed.load_state_dict(opt.state_dict())
  for t in range(4, 8):
    z.grad, w.grad = _gradient(z, t), torch.ones(5) * t
    copy_z.grad, copy_w.grad = z.grad.clone(), w.grad.clone()
    opt.step()
    resumed.step()
  assert torch.equal(z, copy_z) and torch.equal(w, copy_w)
  assert opt.state[z]['0.sum_of_squares'].shape == (3, 2)


def test_integer_parameters_are_still_rejected():
  with pytest.raises(TypeError, match='only floating-point and complex parameters'):
    Expectigrad([torch.zeros(3, dtype=torch.int64)])


def test_compiled_step_matches_eager_on_complex_parameters():
  z = torch.tensor([0.3 + 0.1j, -1.0 + 1.0j], requires_grad=True)
  eager = z.detach().clone().requires_grad_(True)
  compiled_opt = Expectigrad([z], lr=0.05)
  eager_opt = Optimizer([eager], expectigrad.expectigrad, lr=0.05, executor='torch')
  step = torch.compile(compiled_opt.step, fullgraph=True)
  for t in range(1, 6):
    z.grad, eager.grad = _gradient(z, t), _gradient(eager, t)
    step()
    eager_opt.step()
  torch.testing.assert_close(z, eager, rtol=1e-6, atol=1e-7)
