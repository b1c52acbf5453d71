"""The torch bridge and expectigrad.pytorch against the numpy reference and optax itself."""

import copy
import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import expectigrad
from expectigrad.bridges.torch import Optimizer
from expectigrad.pytorch import Expectigrad
from tests import reference


# Every test runs on both CPU paths of the default executor (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('torch_cpu_path')


def _run_torch(opt_factory, grad_fn, x0, steps, dtype=torch.float64):
  """Runs a torch optimizer on numpy gradients; returns the (steps + 1, dim) trajectory."""
  x = torch.nn.Parameter(torch.tensor(x0, dtype=dtype))
  opt = opt_factory([x])
  trajectory = [x.detach().numpy().copy()]
  for t in range(1, steps + 1):
    x.grad = torch.from_numpy(grad_fn(x.detach().numpy().astype(np.float64), t)).to(dtype)
    opt.step()
    trajectory.append(x.detach().numpy().copy())
  return np.stack(trajectory), x, opt


@pytest.mark.parametrize('beta,sparse_counter', reference.CONFIGS)
def test_alternating_quadratic_matches_reference_in_float64(beta, sparse_counter):
  hyper = dict(lr=reference.QUADRATIC_LR, beta=beta, eps=reference.QUADRATIC_EPS,
               sparse_counter=sparse_counter)
  expected = reference.run_reference(**hyper)
  actual, x, opt = _run_torch(lambda p: Expectigrad(p, **hyper), reference.alternating_quadratic_grad,
                              reference.QUADRATIC_X0, reference.QUADRATIC_STEPS)
  assert x.dtype == torch.float64
  assert reference.max_relative_error(actual, expected) < 1e-10
  assert not np.allclose(expected[-1], expected[0])
  state = opt.state_dict()['state'][0]
  assert state['0.count'].item() == reference.QUADRATIC_STEPS
  assert state['0.sum_of_squares'].dtype == torch.float64
  if sparse_counter:
    assert state['0.nonzero_count'].tolist() == [1000, 500]
  assert not jax.config.jax_enable_x64  # the user's global setting is untouched


def test_float32_stays_float32_and_matches_reference_loosely():
  hyper = dict(lr=0.1, beta=0.9, eps=1e-3)
  expected = reference.run_reference(steps=50, **hyper)
  actual, x, opt = _run_torch(lambda p: Expectigrad(p, **hyper), reference.alternating_quadratic_grad,
                              reference.QUADRATIC_X0, 50, dtype=torch.float32)
  assert x.dtype == torch.float32
  assert opt.state_dict()['state'][0]['1.momentum'].dtype == torch.float32
  assert reference.max_relative_error(actual, expected) < 1e-4


def _clipped_chain():
  schedule = lambda count: 0.05 * 0.99**count  # noqa: E731  (float64 under x64)
  return optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(1e-2),
                     expectigrad.expectigrad(schedule, beta=0.8, eps=1e-6))


@pytest.mark.usefixtures('x64')
def test_bridged_chain_matches_the_same_chain_in_jax():
  rng = np.random.default_rng(1)
  shapes = [(3, 4), (5,)]
  steps = 30
  grads = [[rng.normal(size=s) * 3 for s in shapes] for _ in range(steps)]
  x0 = [rng.normal(size=s) for s in shapes]

  params = [torch.nn.Parameter(torch.tensor(x)) for x in x0]
  opt = Optimizer(params, _clipped_chain())
  jax_params = [jnp.asarray(x) for x in x0]
  tx = _clipped_chain()
  state = tx.init(jax_params)
  for step_grads in grads:
    for p, g in zip(params, step_grads):
      p.grad = torch.tensor(g)
    opt.step()
    updates, state = tx.update([jnp.asarray(g) for g in step_grads], state, jax_params)
    jax_params = optax.apply_updates(jax_params, updates)
  for p, expected in zip(params, jax_params):
    assert reference.max_relative_error(p.detach().numpy(), expected) < 1e-12
  assert not np.allclose(params[0].detach().numpy(), x0[0])


def _digits():
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  features, labels = load_digits(return_X_y=True)
  return torch.tensor(features / 16.0, dtype=torch.float32), torch.tensor(labels)


def _mlp():
  return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def test_mlp_on_digits_learns():
  torch.manual_seed(0)
  features, labels = _digits()
  model = _mlp()
  opt = Expectigrad(model.parameters(), lr=1e-2)
  loss_fn = torch.nn.CrossEntropyLoss()
  initial = loss_fn(model(features), labels).item()
  for _ in range(3):
    for batch in torch.randperm(len(labels)).split(64):
      opt.zero_grad()
      loss_fn(model(features[batch]), labels[batch]).backward()
      opt.step()
  with torch.no_grad():
    logits = model(features)
  accuracy = (logits.argmax(1) == labels).float().mean().item()
  assert loss_fn(logits, labels).item() < initial / 10
  assert accuracy > 0.95


def _train(model, opt, batches):
  features, labels = _digits()
  for batch in batches:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(features[batch]), labels[batch]).backward()
    if len(batch) % 2:  # an odd batch leaves the last bias without a gradient: it is skipped
      model[2].bias.grad = None
    opt.step()


def _two_group_optimizer(model):
  return Expectigrad([{'params': model[0].parameters()},
                      {'params': model[2].parameters(), 'lr': 3e-3}], lr=1e-2)


def test_resume_through_torch_save_is_bit_exact():
  torch.manual_seed(0)
  batches = [torch.randint(0, 1797, (n,)) for n in [32, 33, 32, 31, 32, 32, 33, 32]]
  model = _mlp()
  opt = _two_group_optimizer(model)
  _train(model, opt, batches[:4])
  buffer = io.BytesIO()
  torch.save({'model': model.state_dict(), 'opt': opt.state_dict()}, buffer)
  _train(model, opt, batches[4:])

  buffer.seek(0)
  checkpoint = torch.load(buffer, weights_only=True)
  resumed = _mlp()
  resumed.load_state_dict(checkpoint['model'])
  resumed_opt = _two_group_optimizer(resumed)
  resumed_opt.load_state_dict(checkpoint['opt'])
  _train(resumed, resumed_opt, batches[4:])
  for a, b in zip(model.parameters(), resumed.parameters()):
    assert torch.equal(a, b)
  assert resumed_opt.param_groups[1]['lr'] == 3e-3
  saved = opt.state_dict()['state']
  # The last bias missed the odd batches: its own step counter stayed behind.
  assert saved[3]['0.count'].item() == 5 and saved[0]['0.count'].item() == 8
  for index, tensors in resumed_opt.state_dict()['state'].items():
    for name, value in tensors.items():
      assert torch.equal(value, saved[index][name])


def test_param_without_grad_is_skipped_and_keeps_its_state():
  a = torch.nn.Parameter(torch.ones(3))
  b = torch.nn.Parameter(torch.ones(2))
  opt = Expectigrad([a, b], lr=0.1)
  a.grad, b.grad = torch.ones(3), torch.ones(2)
  opt.step()
  before = opt.state_dict()['state'][1]
  b_before = b.detach().clone()
  b.grad = None
  opt.step()
  after = opt.state_dict()['state']
  assert torch.equal(b, b_before)
  for name, value in before.items():
    assert torch.equal(after[1][name], value)
  assert after[0]['0.count'].item() == 2

  fresh = torch.nn.Parameter(torch.ones(2))
  opt = Expectigrad([a, fresh], lr=0.1)
  a.grad = torch.ones(3)
  opt.step()
  assert list(opt.state_dict()['state']) == [0]  # no state for a never-stepped parameter


@pytest.mark.usefixtures('x64')
def test_lr_scheduler_matches_an_optax_schedule_without_retracing():
  x = torch.nn.Parameter(torch.tensor(reference.QUADRATIC_X0))
  opt = Expectigrad([x], lr=0.1, beta=0.9, eps=1.0)
  scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.95)
  tx = expectigrad.expectigrad(lambda count: 0.1 * 0.95**count, beta=0.9, eps=1.0)
  y = jnp.asarray(reference.QUADRATIC_X0)
  state = tx.init(y)
  for t in range(1, 41):
    x.grad = torch.from_numpy(reference.alternating_quadratic_grad(x.detach().numpy(), t))
    opt.step()
    scheduler.step()
    updates, state = tx.update(jnp.asarray(reference.alternating_quadratic_grad(np.asarray(y), t)),
                               state)
    y = optax.apply_updates(y, updates)
  assert reference.max_relative_error(x.detach().numpy(), y) < 1e-10
  assert len(opt._run.lowered) == 1  # traced once: the scheduled lr is a traced input  # pylint: disable=protected-access


def test_two_param_groups_with_different_lr_match_reference():
  x0 = reference.QUADRATIC_X0
  a = torch.nn.Parameter(torch.tensor(x0))
  b = torch.nn.Parameter(torch.tensor(x0))
  opt = Expectigrad([{'params': [a]}, {'params': [b], 'lr': 0.05}], lr=0.5, eps=1.0)
  for t in range(1, 201):
    for p in (a, b):
      p.grad = torch.from_numpy(reference.alternating_quadratic_grad(p.detach().numpy(), t))
    opt.step()
  for p, lr in [(a, 0.5), (b, 0.05)]:
    expected = reference.run_reference(steps=200, lr=lr, eps=1.0)[-1]
    assert reference.max_relative_error(p.detach().numpy(), expected) < 1e-10


def test_step_returns_the_closure_loss():
  x = torch.nn.Parameter(torch.tensor([2.0]))
  opt = Expectigrad([x], lr=0.1)

  def closure():
    opt.zero_grad()
    loss = (x**2).sum()
    loss.backward()
    return loss

  loss = opt.step(closure)
  assert loss.item() == 4.0
  assert x.item() == pytest.approx(1.9)  # the first step moves by lr * sign(g) (eps tiny)
  assert opt.step() is None


@pytest.mark.parametrize('kwargs,name', [
    (dict(lr=-1.0), 'lr'), (dict(beta=1.0), 'beta'),
    (dict(beta=-0.1), 'beta'), (dict(eps=0.0), 'eps'), (dict(lr=float('nan')), 'lr'),
])
def test_bad_hyperparameters_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    Expectigrad([torch.nn.Parameter(torch.ones(2))], **kwargs)


def _stepped():
  x = torch.nn.Parameter(torch.ones(4))
  opt = Expectigrad([x], lr=0.1)
  x.grad = torch.ones(4)
  opt.step()
  return x, opt


def _assert_unchanged(x, opt, before_x, before_state):
  assert torch.equal(x, before_x)
  after = opt.state_dict()['state']
  for name, value in before_state[0].items():
    assert torch.equal(after[0][name], value)


def test_bad_group_edit_raises_and_changes_nothing():
  x, opt = _stepped()
  before_x, before_state = x.detach().clone(), opt.state_dict()['state']
  opt.param_groups[0]['beta'] = 1.5
  with pytest.raises(ValueError, match=r'param_groups\[0\].*beta'):
    opt.step()
  _assert_unchanged(x, opt, before_x, before_state)


@pytest.mark.parametrize('corrupt,match', [
    (lambda sd: sd['state'][0].__setitem__('1.momentum', torch.zeros(5)), 'shape'),
    (lambda sd: sd['state'][0].__setitem__('0.count', torch.zeros((), dtype=torch.float32)), 'dtype'),
    (lambda sd: sd['state'][0].pop('0.sum_of_squares'), 'entries'),
    (lambda sd: sd['state'].__setitem__(7, {}), 'parameter 7'),
    (lambda sd: sd['param_groups'].append(dict(sd['param_groups'][0])), 'param groups'),
    (lambda sd: sd.pop('state'), 'keys'),
])
def test_bad_state_dict_raises_and_changes_nothing(corrupt, match):
  x, opt = _stepped()
  before_x, before_state = x.detach().clone(), opt.state_dict()['state']
  state_dict = opt.state_dict()
  corrupt(state_dict)
  with pytest.raises(ValueError, match=match):
    opt.load_state_dict(state_dict)
  _assert_unchanged(x, opt, before_x, before_state)


@pytest.mark.parametrize('other,missing', [
    (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9), "'beta', 'eps'"),
    (lambda params: torch.optim.Adam(params, lr=0.1), "'beta', 'momentum'"),
])
def test_another_optimizers_state_dict_raises_naming_what_is_missing(other, missing):
  x, opt = _stepped()
  before_x, before_state = x.detach().clone(), opt.state_dict()['state']
  before_groups = copy.deepcopy(opt.param_groups[0])
  y = torch.nn.Parameter(torch.ones(4))
  foreign = other([y])
  y.grad = torch.ones(4)
  foreign.step()
  with pytest.raises(ValueError, match=rf"param_groups\[0\] lacks \[{missing}"):
    opt.load_state_dict(foreign.state_dict())
  _assert_unchanged(x, opt, before_x, before_state)
  assert opt.param_groups[0] == {**before_groups, 'params': [x]}


@pytest.mark.parametrize('make', [
    lambda params, lr: torch.optim.Adam(params, lr=lr),  # the behaviour to match
    lambda params, lr: Expectigrad(params, lr=lr),
])
def test_loaded_param_groups_are_copies_as_in_torch_optim(make):
  """A scheduler on the loading optimizer must not change the saving one's tensor lr."""
  saving = make([torch.nn.Parameter(torch.ones(2))], torch.tensor(0.125))
  loading = make([torch.nn.Parameter(torch.ones(2))], torch.tensor(0.5))
  loading.load_state_dict(saving.state_dict())
  assert float(loading.param_groups[0]['lr']) == 0.125
  loading.param_groups[0]['lr'].fill_(0.25)
  assert float(saving.param_groups[0]['lr']) == 0.125


def test_bridge_argument_errors():
  x = torch.nn.Parameter(torch.ones(2))
  with pytest.raises(TypeError, match='factory'):
    Optimizer([x], optax.sgd(0.1), lr=0.1)
  with pytest.raises(TypeError, match='GradientTransformation'):
    Optimizer([x], 'adam')
  with pytest.raises(TypeError, match='floating-point'):
    Optimizer([torch.ones(2, dtype=torch.int64)], optax.sgd(0.1))


def test_bad_added_group_raises_and_is_not_added():
  x, opt = _stepped()
  with pytest.raises(ValueError, match=r'param_groups\[1\]: lr must be'):
    opt.add_param_group({'params': [torch.nn.Parameter(torch.ones(2))], 'lr': -1.0})
  assert len(opt.param_groups) == 1
