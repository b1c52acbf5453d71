"""torch.optim's generic optimizer contract, for the torch bridge and expectigrad.pytorch.

These are the checks torch's own test/test_optim.py makes of every optimizer
(no-op steps, deepcopy and pickle, hooks, state dicts, distributed
checkpoint state dicts, torch.compile, LR schedulers, param-group edits,
hyperparameter types, maximize, fake tensors), written for
:class:`expectigrad.bridges.torch.Optimizer` (any optax chain) and the
published :class:`expectigrad.pytorch.Expectigrad`.

Parity with the numpy reference, resume through torch.save, parameters
without gradients, schedulers matching optax schedules, groups, bad
hyperparameters at construction and bad state dicts are in
test_torch_bridge.py.
"""

import copy
import pickle
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import expectigrad
from expectigrad import jax2torch
from expectigrad.bridges.torch import Optimizer
from expectigrad.pytorch import Expectigrad
from tests import fake_cuda, reference

LR = 0.05


# -- helpers ----------------------------------------------------------------------------


def _mlp(seed=0, dtype=torch.float32):
  """A tiny MLP with deterministic initial weights."""
  torch.manual_seed(seed)
  return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(),
                             torch.nn.Linear(5, 2)).to(dtype)


def _inputs(steps, seed=1, dtype=torch.float32):
  """``steps`` fixed batches of inputs."""
  generator = torch.Generator().manual_seed(seed)
  return [torch.randn(8, 3, generator=generator, dtype=dtype) for _ in range(steps)]


def _backward(model, x):
  """Sets the model's gradients for one batch (the loss is not linear: grads vary)."""
  model.zero_grad(set_to_none=True)
  loss = (model(x) - 0.5).square().mean()
  loss.backward()
  return loss


def _train(model, opt, xs, step=None, after_step=None):
  """One step per batch of ``xs``, with ``step`` (default ``opt.step``), then ``after_step``."""
  for x in xs:
    _backward(model, x)
    (step or opt.step)()
    if after_step is not None:
      after_step()


def _clipped_chain():
  """A fixed optax chain with a tree-wide transformation and parameter-dependent state."""
  return optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(1e-2),
                     expectigrad.expectigrad(LR, beta=0.8, eps=1e-6))


# The optimizers every generic check runs on: the published class (executor
# 'auto'), the bridge over the Expectigrad factory on each executor, and the
# bridge over a fixed chain.
OPTIMIZERS = {
    'published': lambda params: Expectigrad(params, lr=LR),
    'torch': lambda params: Optimizer(params, expectigrad.expectigrad, executor='torch', lr=LR),
    'jax': lambda params: Optimizer(params, expectigrad.expectigrad, executor='jax', lr=LR),
    'chain': lambda params: Optimizer(params, _clipped_chain()),
}
FACTORY_OPTIMIZERS = ['published', 'torch', 'jax']  # those with an 'lr' in their groups


def _state_tensors(opt):
  """``{(group, position, name): tensor}`` for every state tensor of ``opt``."""
  tensors = {}
  for g, group in enumerate(opt.param_groups):
    for i, p in enumerate(group['params']):
      for name, value in opt.state.get(p, {}).items():
        assert isinstance(value, torch.Tensor), (name, type(value))
        tensors[g, i, name] = value
  return tensors


def _snapshot(model, opt):
  """Detached copies of the parameters and of the whole optimizer state."""
  return ([p.detach().clone() for p in model.parameters()],
          {k: v.detach().clone() for k, v in _state_tensors(opt).items()})


def _assert_bit_identical(a, b):
  """Two snapshots (or (model, opt) pairs) hold bit-identical parameters and state."""
  (params_a, state_a), (params_b, state_b) = (
      _snapshot(*x) if isinstance(x[0], torch.nn.Module) else x for x in (a, b))
  assert len(params_a) == len(params_b)
  for pa, pb in zip(params_a, params_b):
    assert pa.dtype == pb.dtype and torch.equal(pa, pb), (pa - pb).abs().max()
  assert sorted(state_a) == sorted(state_b)
  for key, value in state_a.items():
    assert value.dtype == state_b[key].dtype, key
    assert value.shape == state_b[key].shape, key
    assert torch.equal(value, state_b[key]), key


def _assert_close(model_a, model_b, rtol, atol):
  for pa, pb in zip(model_a.parameters(), model_b.parameters()):
    torch.testing.assert_close(pa, pb, rtol=rtol, atol=atol)


def _dynamo_testing():
  """torch._dynamo with torch._dynamo.testing loaded, reset (no graphs cached from other tests)."""
  import torch._dynamo  # pylint: disable=import-outside-toplevel
  import torch._dynamo.testing  # pylint: disable=import-outside-toplevel
  torch._dynamo.reset()
  return torch._dynamo


# -- 1. a step without gradients --------------------------------------------------------


@pytest.mark.parametrize('kind', list(OPTIMIZERS))
def test_step_without_any_gradient_is_a_no_op(kind):
  """A step where no parameter has a gradient changes nothing and creates no state.

  The no-op step is not counted either: a real step after it equals a first step.
  """
  model = _mlp()
  opt = OPTIMIZERS[kind](model.parameters())
  before = _snapshot(model, opt)
  assert opt.step() is None
  _assert_bit_identical((model, opt), before)
  assert not _state_tensors(opt)
  assert all(not entries for entries in opt.state.values())

  fresh_model = _mlp()
  fresh_opt = OPTIMIZERS[kind](fresh_model.parameters())
  x = _inputs(1)
  _train(model, opt, x)
  _train(fresh_model, fresh_opt, x)
  _assert_bit_identical((model, opt), (fresh_model, fresh_opt))


# -- 2. deepcopy and pickle ---------------------------------------------------------------


def _deepcopy(pair):
  return copy.deepcopy(pair)


def _pickle(pair):
  return pickle.loads(pickle.dumps(pair))


@pytest.mark.parametrize('kind,duplicate', [
    *[(kind, _deepcopy) for kind in OPTIMIZERS],
    ('published', _pickle),
    ('torch', _pickle),
], ids=lambda v: getattr(v, '__name__', v).strip('_'))
def test_copied_optimizer_steps_bit_identically(kind, duplicate):
  """A copy of a stepped (model, optimizer) pair steps exactly as the original.

  Copying model and optimizer together keeps the copy's param groups pointing
  at the copied parameters, and the copy's state is its own: stepping both
  (the copy and the original) gives bit-identical parameters and state.
  """
  model = _mlp()
  opt = OPTIMIZERS[kind](model.parameters())
  xs = _inputs(6)
  _train(model, opt, xs[:3])
  model_copy, opt_copy = duplicate((model, opt))
  assert type(opt_copy) is type(opt)
  for p, q in zip(model_copy.parameters(), opt_copy.param_groups[0]['params']):
    assert p is q
  _assert_bit_identical((model, opt), (model_copy, opt_copy))
  for key, value in _state_tensors(opt_copy).items():
    assert value.data_ptr() != _state_tensors(opt)[key].data_ptr() or value.numel() == 0, key

  _train(model, opt, xs[3:])
  _train(model_copy, opt_copy, xs[3:])
  _assert_bit_identical((model, opt), (model_copy, opt_copy))
  assert not torch.equal(model[0].weight, _mlp()[0].weight)


# -- 3. hooks and state dicts --------------------------------------------------------------


def test_hooks_are_called_and_a_load_pre_hook_may_replace_the_dict():
  """Step, state_dict and load_state_dict hooks run, in order, with the optimizer.

  A state_dict post-hook's returned dict is what state_dict() returns; a
  load_state_dict pre-hook's returned dict is what gets loaded (here it drops
  the post-hook's extra key and sets a new lr); training then resumes exactly
  as an uninterrupted run whose lr changed at the same point.
  """
  calls = []
  model = _mlp()
  opt = Expectigrad(model.parameters(), lr=LR)

  def step_pre(optimizer, args, kwargs):
    assert optimizer is opt and kwargs == {}
    del args  # torch passes the bound call's positional arguments
    calls.append('step_pre')

  def step_post(optimizer, args, kwargs):
    assert optimizer is opt
    calls.append('step_post')

  def state_dict_pre(optimizer):
    assert optimizer is opt
    calls.append('state_dict_pre')

  def state_dict_post(optimizer, state_dict):
    calls.append('state_dict_post')
    return {**state_dict, 'note': 'added by a hook'}

  def load_pre(optimizer, state_dict):
    calls.append('load_pre')
    assert state_dict['note'] == 'added by a hook'
    groups = [{**group, 'lr': 0.01} for group in state_dict['param_groups']]
    return {'state': state_dict['state'], 'param_groups': groups}

  def load_post(optimizer):
    assert optimizer.param_groups[0]['lr'] == 0.01
    calls.append('load_post')

  handles = [opt.register_step_pre_hook(step_pre), opt.register_step_post_hook(step_post),
             opt.register_state_dict_pre_hook(state_dict_pre),
             opt.register_state_dict_post_hook(state_dict_post),
             opt.register_load_state_dict_pre_hook(load_pre),
             opt.register_load_state_dict_post_hook(load_post)]
  xs = _inputs(6)
  _train(model, opt, xs[:3])
  assert calls == ['step_pre', 'step_post'] * 3
  calls.clear()

  saved = copy.deepcopy(opt.state_dict())
  assert calls == ['state_dict_pre', 'state_dict_post']
  assert saved['note'] == 'added by a hook'
  assert saved['param_groups'][0]['lr'] == LR
  saved_model = copy.deepcopy(model.state_dict())
  _train(model, opt, xs[3:4])  # moves on, then is rolled back by the load

  model.load_state_dict(saved_model)
  calls.clear()
  opt.load_state_dict(saved)
  assert calls == ['load_pre', 'load_post']
  assert opt.param_groups[0]['lr'] == 0.01
  _train(model, opt, xs[3:])

  uninterrupted = _mlp()
  uninterrupted_opt = Expectigrad(uninterrupted.parameters(), lr=LR)
  _train(uninterrupted, uninterrupted_opt, xs[:3])
  uninterrupted_opt.param_groups[0]['lr'] = 0.01
  _train(uninterrupted, uninterrupted_opt, xs[3:])
  _assert_bit_identical((model, opt), (uninterrupted, uninterrupted_opt))

  for handle in handles:
    handle.remove()
  calls.clear()
  _train(model, opt, xs[:1])
  opt.load_state_dict(opt.state_dict())
  assert calls == []


@pytest.mark.parametrize('kind', list(OPTIMIZERS))
def test_state_dict_round_trip_resumes_bit_exactly(kind):
  """state_dict() -> load_state_dict() into a new optimizer resumes an uninterrupted run exactly.

  The new optimizer starts with other parameters' values and (for factories)
  another lr; the loaded dict restores both the state and the group values.
  """
  xs = _inputs(7)
  uninterrupted = _mlp()
  uninterrupted_opt = OPTIMIZERS[kind](uninterrupted.parameters())
  _train(uninterrupted, uninterrupted_opt, xs)

  model = _mlp()
  opt = OPTIMIZERS[kind](model.parameters())
  _train(model, opt, xs[:4])
  saved_opt = copy.deepcopy(opt.state_dict())
  saved_model = copy.deepcopy(model.state_dict())

  resumed = _mlp(seed=5)
  resumed_opt = OPTIMIZERS[kind](resumed.parameters())
  if 'lr' in resumed_opt.param_groups[0]:
    resumed_opt.param_groups[0]['lr'] = 0.5
  _train(resumed, resumed_opt, xs[:1])  # some other state, which the load replaces
  resumed.load_state_dict(saved_model)
  resumed_opt.load_state_dict(saved_opt)
  _train(resumed, resumed_opt, xs[4:])
  _assert_bit_identical((uninterrupted, uninterrupted_opt), (resumed, resumed_opt))


# -- 4. torch.distributed.checkpoint state dicts --------------------------------------------


# Not the fixed chain: set_optimizer_state_dict creates an empty optimizer's state
# by stepping it with zero gradients and lr 0, which moves parameters under
# weight decay (the chain has no lr to zero).
@pytest.mark.parametrize('kind', FACTORY_OPTIMIZERS)
def test_distributed_checkpoint_state_dict_round_trip(kind):
  """get_optimizer_state_dict / set_optimizer_state_dict round trip exactly.

  The DCP dict is keyed by parameter names; setting it on a fresh optimizer
  (whose lr differs) restores state and groups, and both then step
  bit-identically.
  """
  # pylint: disable-next=import-outside-toplevel
  from torch.distributed.checkpoint import state_dict as dcp

  xs = _inputs(6)
  model = _mlp()
  opt = OPTIMIZERS[kind](model.parameters())
  _train(model, opt, xs[:3])
  saved = copy.deepcopy(dcp.get_optimizer_state_dict(model, opt))
  names = [name for name, _ in model.named_parameters()]
  assert sorted(saved['state']) == sorted(names)
  assert saved['param_groups'][0]['params'] == names
  assert saved['state']['0.weight']['1.momentum'].shape == model[0].weight.shape

  other = copy.deepcopy(model)
  other_opt = OPTIMIZERS[kind](other.parameters())
  other_opt.param_groups[0]['lr'] = 0.5
  dcp.set_optimizer_state_dict(other, other_opt, optim_state_dict=saved)
  assert other_opt.param_groups[0]['lr'] == LR
  _assert_bit_identical((model, opt), (other, other_opt))

  _train(model, opt, xs[3:])
  _train(other, other_opt, xs[3:])
  _assert_bit_identical((model, opt), (other, other_opt))


# -- 5. torch.compile ---------------------------------------------------------------------


def _fullgraph_and_eager(steps: int):
  """An MLP trained ``steps`` steps under torch.compile(opt.step, fullgraph=True), and eagerly.

  Returns:
    ``(compiled_model, compiled_opt, eager_model, eager_opt)``, both with a tensor lr.
  """
  _dynamo_testing()
  compiled_model, eager_model = _mlp(), _mlp()
  compiled_opt = Expectigrad(compiled_model.parameters(), lr=torch.tensor(0.01))
  eager_opt = Expectigrad(eager_model.parameters(), lr=torch.tensor(0.01))
  step = torch.compile(compiled_opt.step, fullgraph=True)
  for x in _inputs(steps):
    _train(compiled_model, compiled_opt, [x], step=step)
    _train(eager_model, eager_opt, [x])
  return compiled_model, compiled_opt, eager_model, eager_opt


def test_fullgraph_compiled_step_matches_eager():
  """torch.compile(opt.step, fullgraph=True) with a tensor lr matches eager steps (float32)."""
  compiled_model, compiled_opt, eager_model, _ = _fullgraph_and_eager(20)
  _assert_close(compiled_model, eager_model, rtol=1e-6, atol=1e-7)
  state = compiled_opt.state[compiled_model[0].weight]
  assert state['0.count'].item() == 20 and state['1.momentum'].shape == (5, 3)


def test_fullgraph_compiled_step_keeps_every_state_entry_equal_to_eager():
  """Under torch.compile(opt.step, fullgraph=True) the whole state follows eager steps.

  Step counts are shared by the parameters that step together, and every
  parameter's copy must hold the same count (a checkpoint restores each
  parameter's own copy: a wrong one changes its bias correction on resume).
  """
  _, compiled_opt, _, eager_opt = _fullgraph_and_eager(3)
  compiled_state, eager_state = _state_tensors(compiled_opt), _state_tensors(eager_opt)
  assert sorted(compiled_state) == sorted(eager_state)
  counts = {key: value.item() for key, value in compiled_state.items() if value.ndim == 0}
  assert counts == {key: 3 for key in counts}
  for key, value in compiled_state.items():
    torch.testing.assert_close(value, eager_state[key], rtol=1e-6, atol=1e-7)


def test_compiled_step_with_a_scheduler_compiles_once():
  """A fullgraph-compiled step under CosineAnnealingLR (tensor lr) does not recompile.

  The first call compiles the step: Dynamo creates the state eagerly (the
  optimizer's ``_init_group``, as for ``torch.optim.Adam``), so the graph
  already reads it; the scheduler's new lr values (filled into the lr
  tensor) never recompile over 100 steps, and the results follow an eager
  run with the same schedule.
  """
  dynamo = _dynamo_testing()
  counter = dynamo.testing.CompileCounterWithBackend('inductor')
  model, eager_model = _mlp(), _mlp()
  opt = Expectigrad(model.parameters(), lr=torch.tensor(0.05))
  eager_opt = Expectigrad(eager_model.parameters(), lr=torch.tensor(0.05))
  step = torch.compile(opt.step, fullgraph=True, backend=counter)
  # Created after the compiled step is taken: schedulers wrap opt.step.
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30)
  eager_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(eager_opt, T_max=30)
  lrs = set()
  with warnings.catch_warnings():
    # The compiled step is not the wrapped opt.step the scheduler counts.
    warnings.filterwarnings('ignore', message='Detected call of `lr_scheduler.step')
    for x in _inputs(100):
      _train(model, opt, [x], step=step, after_step=scheduler.step)
      _train(eager_model, eager_opt, [x], after_step=eager_scheduler.step)
      lrs.add(float(opt.param_groups[0]['lr']))
      assert counter.frame_count == 1
  assert isinstance(opt.param_groups[0]['lr'], torch.Tensor)
  assert len(lrs) > 25  # a cosine of period 60 steps, through 0
  _assert_close(model, eager_model, rtol=1e-5, atol=1e-6)


def test_compiled_step_when_a_parameter_misses_gradients_matches_eager():
  """Under a fullgraph torch.compile, steps where a parameter has no gradient match eager.

  The parameters that step form a new set (a new lowering, split step
  counts): Dynamo runs ``_init_group`` eagerly, which lowers it, so no eager
  step is needed first.
  """
  _dynamo_testing()
  model, eager_model = _mlp(), _mlp()
  opt = Expectigrad(model.parameters(), lr=LR)
  eager_opt = Expectigrad(eager_model.parameters(), lr=LR)
  step = torch.compile(opt.step, fullgraph=True)
  for t, x in enumerate(_inputs(6)):
    for m, run in ((model, step), (eager_model, eager_opt.step)):
      _backward(m, x)
      if t in (2, 3):
        m[0].bias.grad = None
      run()
  _assert_close(model, eager_model, rtol=1e-6, atol=1e-7)
  assert opt.state[model[0].bias]['0.count'].item() == 4
  assert opt.state[model[0].weight]['0.count'].item() == 6


def test_compiled_step_follows_float_lr_edits_and_refuses_a_negative_one():
  """Under a fullgraph torch.compile, float lr edits apply, and lr < 0 is refused, changing nothing.

  After one change Dynamo treats the float as symbolic; the range checks
  run eagerly (``_init_group``) and the step still traces whole.
  """
  _dynamo_testing()
  model, eager_model = _mlp(), _mlp()
  opt = Expectigrad(model.parameters(), lr=0.1)
  eager_opt = Expectigrad(eager_model.parameters(), lr=0.1)
  step = torch.compile(opt.step, fullgraph=True)
  xs = _inputs(5)
  for lr, x in zip((0.1, 0.05, 0.02, 0.0), xs):
    for m, o, run in ((model, opt, step), (eager_model, eager_opt, eager_opt.step)):
      o.param_groups[0]['lr'] = lr
      _backward(m, x)
      run()
  _assert_close(model, eager_model, rtol=1e-6, atol=1e-7)
  opt.param_groups[0]['lr'] = -0.1
  _backward(model, xs[4])
  params, state = _snapshot(model, opt)
  with pytest.raises(Exception, match=r'param_groups\[0\]: lr must be a finite number >= 0'):
    step()   # the ValueError, as torch.compile reports errors raised while it traces
  for p, before in zip(model.parameters(), params):
    assert torch.equal(p, before)
  after = _state_tensors(opt)
  assert set(after) == set(state) and all(torch.equal(after[k], state[k]) for k in state)


def test_compiled_step_is_one_opaque_update_op():
  """Under torch.compile the update is one ``expectigrad::compiled_in_place`` call.

  The caller's compile does not trace the lowered program (it is compiled
  on its own, faster), and the state is created before tracing, so the graph
  creates no state.
  """
  dynamo = _dynamo_testing()
  graphs = []
  def backend(gm, inputs):
    graphs.append(gm)
    return gm.forward
  model = _mlp()
  opt = Expectigrad(model.parameters(), lr=torch.tensor(LR))
  _backward(model, _inputs(1)[0])
  dynamo.optimize(backend, nopython=True)(opt.step)()
  (graph,) = graphs
  targets = [str(node.target) for node in graph.graph.nodes if node.op == 'call_function']
  assert targets.count('expectigrad.compiled_in_place') == 1, targets
  # Besides it: grad mode, and the 0-d constants of the float hyperparameters.
  assert not any('foreach' in t or 'aten' in t or 'zeros' in t for t in targets), targets


def _training_step(model, opt, x):
  loss = _backward(model, x)
  opt.step()
  return loss


def test_compiled_training_step_matches_eager():
  """A torch.compile'd function doing forward, backward and opt.step() matches eager."""
  _dynamo_testing()
  model, eager_model = _mlp(), _mlp()
  opt = Expectigrad(model.parameters(), lr=LR)
  eager_opt = Expectigrad(eager_model.parameters(), lr=LR)
  compiled = torch.compile(_training_step)
  for x in _inputs(3):
    loss = compiled(model, opt, x)
    eager_loss = _training_step(eager_model, eager_opt, x)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
  _assert_close(model, eager_model, rtol=1e-5, atol=1e-6)
  assert opt.state[model[2].bias]['0.count'].item() == 3


def test_default_compile_has_no_graph_break_inside_the_step():
  """Under a default (not fullgraph) torch.compile, opt.step() is one graph (no graph breaks)."""
  dynamo = _dynamo_testing()
  model = _mlp()
  opt = Expectigrad(model.parameters(), lr=LR)
  _train(model, opt, _inputs(1))  # the state exists: the step reads it
  _backward(model, _inputs(1, seed=2)[0])
  explanation = dynamo.explain(opt.step)()
  assert explanation.graph_break_count == 0, explanation.break_reasons[:1]


def test_internal_compile_option_matches_eager():
  """Optimizer(..., compile=True) (the step compiled internally) matches the eager torch step."""
  _dynamo_testing()
  model, eager_model = _mlp(), _mlp()
  opt = Optimizer(model.parameters(), expectigrad.expectigrad, compile=True, lr=LR)
  eager_opt = Optimizer(eager_model.parameters(), expectigrad.expectigrad, executor='torch',
                        lr=LR)
  xs = _inputs(5)
  _train(model, opt, xs)
  _train(eager_model, eager_opt, xs)
  _assert_close(model, eager_model, rtol=1e-6, atol=1e-7)
  assert opt.state[model[0].weight]['0.count'].item() == 5


def test_internal_compile_is_kept_in_inductors_cache():
  """A second optimizer over the same shapes loads its compiled step from Inductor's FX cache."""
  from torch._dynamo.utils import counters  # pylint: disable=import-outside-toplevel
  counters.clear()
  for _ in range(2):
    model = _mlp()
    _train(model, Optimizer(model.parameters(), expectigrad.expectigrad, compile=True, lr=LR),
           _inputs(1))
  assert counters['inductor']['fxgraph_cache_bypass'] == 0, dict(counters['inductor'])
  assert counters['inductor']['fxgraph_cache_hit'] >= 1, dict(counters['inductor'])


def test_internal_compile_follows_new_layouts_and_repeated_tensors():
  """compile=True stays right when gradient strides change or two hyperparameters are one tensor.

  The internal compile has no Dynamo guards; a new layout of its arguments
  (strides, one tensor passed twice, which Inductor merges) compiles again.
  """
  model, eager_model = _mlp(), _mlp()
  opt = Optimizer(model.parameters(), expectigrad.expectigrad, compile=True, lr=LR)
  eager_opt = Optimizer(eager_model.parameters(), expectigrad.expectigrad, executor='torch',
                        lr=LR)
  shared = torch.tensor(0.5)
  edits = [None, 'transposed grads', 'lr and beta one tensor', 'lr and beta apart']
  for edit, x in zip(edits, _inputs(len(edits))):
    for m, o in ((model, opt), (eager_model, eager_opt)):
      _backward(m, x)
      if edit == 'transposed grads':
        weight = m[0].weight
        weight.grad = weight.grad.t().contiguous().t()   # same values, column-major strides
      if edit == 'lr and beta one tensor':
        o.param_groups[0].update(lr=shared, beta=shared)
      if edit == 'lr and beta apart':
        o.param_groups[0].update(lr=torch.tensor(0.5), beta=torch.tensor(0.9))
      o.step()
    _assert_close(model, eager_model, rtol=1e-6, atol=1e-7)


# -- 6. lr = 0 -----------------------------------------------------------------------------


@pytest.mark.parametrize('kind', FACTORY_OPTIMIZERS)
def test_cosine_schedule_through_lr_zero(kind):
  """CosineAnnealingLR(T_max=10, eta_min=0) reaches lr == 0 exactly and keeps going.

  The step taken with lr 0 leaves the parameters unchanged but still
  advances the state (step counts, sums, momentum).
  """
  model = _mlp()
  opt = OPTIMIZERS[kind](model.parameters())
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0)
  zero_steps = 0
  for t, x in enumerate(_inputs(25)):
    _backward(model, x)
    params, state = _snapshot(model, opt)
    lr = opt.param_groups[0]['lr']
    opt.step()
    scheduler.step()
    if lr == 0:
      zero_steps += 1
      assert t == 10
      for p, before in zip(model.parameters(), params):
        assert torch.equal(p, before)
      after = _state_tensors(opt)
      for key in after:
        if key[2].endswith('count') and after[key].ndim == 0:
          assert after[key].item() == state[key].item() + 1
      assert not torch.equal(after[0, 0, '0.sum_of_squares'], state[0, 0, '0.sum_of_squares'])
      assert not torch.equal(after[0, 0, '1.momentum'], state[0, 0, '1.momentum'])
    else:
      assert not torch.equal(model[0].weight, params[0])
  assert zero_steps == 1
  assert all(torch.isfinite(p).all() for p in model.parameters())


# -- 7. rejected group edits ---------------------------------------------------------------



@pytest.mark.parametrize('key,value,name', [
    ('beta', None, 'beta'),
    ('lr', 'abc', '(lr|learning_rate)'),
    ('beta', 1.5, 'beta'),
    ('eps', 0, 'eps'),
    ('lr', -1, '(lr|learning_rate)'),
])
def test_rejected_edit_in_the_second_group_changes_nothing(key, value, name):
  """A bad value in param_groups[1] raises, naming group and value, before anything steps.

  The parameters of both groups and the whole state stay bit-identical.
  """
  model = _mlp()
  opt = Expectigrad([{'params': model[0].parameters()},
                     {'params': model[2].parameters(), 'lr': 0.01}], lr=LR)
  xs = _inputs(2)
  _train(model, opt, xs[:1])
  opt.param_groups[1][key] = value
  before = _snapshot(model, opt)
  _backward(model, xs[1])
  with pytest.raises((TypeError, ValueError), match=rf'param_groups\[1\].*{name}'):
    opt.step()
  _assert_bit_identical((model, opt), before)


# -- 8. hyperparameter types -------------------------------------------------------------


def _hyper_kinds(dtype):
  """Ways to write a hyperparameter that must equal the Python float for ``dtype`` params."""
  kinds = {'numpy_float64': np.float64,
           'tensor_float64': lambda v: torch.tensor(v, dtype=torch.float64)}
  if dtype == torch.float32:  # float32 values are exact only for float32 parameters
    kinds.update(numpy_float32=np.float32,
                 tensor_float32=lambda v: torch.tensor(v, dtype=torch.float32))
  return kinds


@pytest.mark.parametrize('kind', ['published', 'torch'])
@pytest.mark.parametrize('dtype,hyper', [
    (dtype, hyper) for dtype in (torch.float32, torch.float64) for hyper in _hyper_kinds(dtype)])
def test_numpy_scalars_and_tensors_match_python_floats(kind, dtype, hyper):
  """lr, beta and eps given as numpy scalars or 0-d tensors step exactly as Python floats."""
  convert = _hyper_kinds(dtype)[hyper]
  values = dict(lr=1e-3, beta=0.9, eps=1e-8)
  make = ((lambda params, **h: Expectigrad(params, **h)) if kind == 'published' else
          (lambda params, **h: Optimizer(params, expectigrad.expectigrad, executor='torch', **h)))
  floats_model, model = _mlp(dtype=dtype), _mlp(dtype=dtype)
  floats_opt = make(floats_model.parameters(), **values)
  opt = make(model.parameters(), **{k: convert(v) for k, v in values.items()})
  xs = _inputs(4, dtype=dtype)
  _train(floats_model, floats_opt, xs)
  _train(model, opt, xs)
  _assert_bit_identical((model, opt), (floats_model, floats_opt))
  assert not torch.equal(model[0].weight, _mlp(dtype=dtype)[0].weight)


# -- 9. maximize ---------------------------------------------------------------------------


@pytest.mark.parametrize('kind', FACTORY_OPTIMIZERS)
def test_maximize_in_a_group_equals_negated_gradients(kind):
  """A group with maximize=True steps exactly as that group with negated gradients."""
  model, negated = _mlp(), _mlp()
  make = OPTIMIZERS[kind]
  opt = make([{'params': model[0].parameters(), 'maximize': True},
              {'params': model[2].parameters()}])
  reference_opt = make([{'params': negated[0].parameters()},
                        {'params': negated[2].parameters()}])
  assert opt.param_groups[0]['maximize'] and not opt.param_groups[1]['maximize']
  for x in _inputs(4):
    _backward(model, x)
    _backward(negated, x)
    for p in negated[0].parameters():
      p.grad.neg_()
    opt.step()
    reference_opt.step()
  _assert_bit_identical((model, opt), (negated, reference_opt))


def test_maximize_keyword_as_torch_optim_takes_it():
  """Expectigrad(params, lr, maximize=True) is a maximize=True group (default False, as Adam)."""
  model, grouped = _mlp(), _mlp()
  opt = Expectigrad(model.parameters(), lr=LR, maximize=True)
  reference_opt = Expectigrad([{'params': grouped.parameters(), 'maximize': True}], lr=LR)
  assert torch.optim.Adam(_mlp().parameters()).defaults['maximize'] is False
  assert Expectigrad(_mlp().parameters()).defaults['maximize'] is False
  _train(model, opt, _inputs(3))
  _train(grouped, reference_opt, _inputs(3))
  _assert_bit_identical((model, opt), (grouped, reference_opt))
  with pytest.raises(TypeError, match='maximize must be a bool'):
    Expectigrad(_mlp().parameters(), maximize='yes')


@pytest.mark.parametrize('kind', FACTORY_OPTIMIZERS)
def test_tensor_lr_with_more_than_one_element_raises_as_in_torch(kind):
  lr = torch.tensor([0.1, 0.2])
  with pytest.raises(ValueError, match='Tensor lr must be 1-element'):
    torch.optim.Adam(_mlp().parameters(), lr=lr)  # the behaviour to match
  with pytest.raises(ValueError, match='Tensor lr must be 1-element'):
    OPTIMIZERS[kind]([{'params': _mlp().parameters(), 'lr': lr}])
  model = _mlp()
  opt = OPTIMIZERS[kind](model.parameters())
  _train(model, opt, _inputs(1))
  before = _snapshot(model, opt)
  opt.param_groups[0]['lr'] = lr
  with pytest.raises(ValueError, match=r'param_groups\[0\]: Tensor lr must be 1-element'):
    _train(model, opt, _inputs(1))
  _assert_bit_identical(before, _snapshot(model, opt))


# -- 10. OneCycleLR ----------------------------------------------------------------------


def test_one_cycle_lr_cycles_beta_through_momentum():
  """OneCycleLR(cycle_momentum=True) works on Expectigrad and its momentum is beta.

  The group's 'momentum' changes over the cycle, and each step equals an
  Expectigrad whose lr and beta are set to the same values by hand.
  """
  model, by_hand = _mlp(), _mlp()
  opt = Expectigrad(model.parameters(), lr=0.01)
  hand_opt = Expectigrad(by_hand.parameters(), lr=0.01)
  scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=50)
  momenta = []
  for t, x in enumerate(_inputs(50)):
    group = opt.param_groups[0]
    momenta.append(group['momentum'])
    hand_opt.param_groups[0].update(lr=group['lr'], beta=group['momentum'])
    _train(model, opt, [x])
    _train(by_hand, hand_opt, [x])
    if t < 49:
      scheduler.step()
  assert hand_opt.param_groups[0]['momentum'] is None
  assert len(set(momenta)) > 10
  assert min(momenta) == pytest.approx(0.85) and max(momenta) == pytest.approx(0.95)
  _assert_bit_identical((model, opt), (by_hand, hand_opt))


# -- 11. state layout ----------------------------------------------------------------------


@pytest.mark.parametrize('kind', ['jax', 'torch', 'published'])
def test_conv_state_layout_and_optax_state_match_jax(kind):
  """A Conv2d weight's state is per element, shaped like it; optax_state() is JAX's state.

  optimizer.state[w] holds the weight's shape (float32 sums and momentum,
  int32 counters) and 0-d step counts; optax_state() has the structure
  optax gives, and its leaves are the state JAX computes from the same
  gradients: bit-exactly when the chain runs on the JAX runtime (XLA on both
  sides), to float32 rounding when it runs as torch operations (torch's
  kernels round a few ulps apart from XLA's fused ones, which cancellation in
  the momentum magnifies: rtol 1e-6 with atol 1e-7).
  """
  torch.manual_seed(0)
  weight = torch.nn.Conv2d(4, 8, 3).weight
  initial = weight.detach().clone()
  hyper = dict(lr=0.01, beta=0.9, eps=1e-8)
  if kind == 'published':
    opt = Expectigrad([weight], **hyper)
  else:
    opt = Optimizer([weight], expectigrad.expectigrad, executor=kind, **hyper)
  grads = [torch.randn_like(weight) * (torch.rand_like(weight) > 0.3) for _ in range(4)]
  for g in grads:
    weight.grad = g.clone()
    opt.step()

  state = opt.state[weight]
  assert sorted(state) == ['0.count', '0.nonzero_count', '0.sum_of_squares', '1.count',
                           '1.momentum']
  for name, value in state.items():
    per_element = name in ('0.nonzero_count', '0.sum_of_squares', '1.momentum')
    assert value.shape == (weight.shape if per_element else ()), name
    assert value.dtype == (torch.int32 if name.endswith('count') else torch.float32), name
    assert value.device == weight.device
  assert state['0.count'].item() == 4
  assert torch.equal(state['0.nonzero_count'], sum((g != 0).int() for g in grads))

  # JAX on the same gradients, the hyperparameters traced as the bridge traces them.
  def update(h, g, s):
    return expectigrad.expectigrad(**h).update(g, s)

  jax_hyper = dict(learning_rate=jnp.float32(0.01), beta=jnp.float32(0.9), eps=jnp.float32(1e-8))
  jax_state = expectigrad.expectigrad(**jax_hyper).init({'000000': jnp.asarray(initial.numpy())})
  for g in grads:
    _, jax_state = jax.jit(update)(jax_hyper, {'000000': jnp.asarray(g.numpy())}, jax_state)

  ours = opt.optax_state()
  assert jax.tree.structure(ours) == jax.tree.structure(jax_state)
  for mine, theirs in zip(jax.tree.leaves(ours), jax.tree.leaves(jax_state)):
    mine, theirs = np.asarray(mine), np.asarray(theirs)
    assert mine.dtype == theirs.dtype and mine.size == theirs.size
    mine = mine.reshape(theirs.shape)
    if kind == 'jax' or mine.dtype.kind == 'i':
      np.testing.assert_array_equal(mine, theirs)
    else:
      np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-7)
  momentum = np.asarray(jax_state[1].momentum['000000']).reshape(weight.shape)
  np.testing.assert_allclose(state['1.momentum'].numpy(), momentum,
                             rtol=0 if kind == 'jax' else 1e-6, atol=0 if kind == 'jax' else 1e-7)


@pytest.mark.parametrize('kind', list(OPTIMIZERS))
def test_step_counts_are_one_tensor_per_cohort_and_split_when_steps_differ(kind):
  """Parameters that step together hold one step-count tensor; each keeps its own count.

  When one parameter misses a step, its counts stay behind while the
  others' advance; after load_state_dict (a tensor per parameter) the
  counts continue from the loaded values, shared again per cohort.
  """
  def counts(opt, params):
    return {name: [opt.state[p][name].item() for p in params]
            for name, value in opt.state[params[0]].items() if value.ndim == 0}

  def assert_shared(opt, cohort):
    for name, value in opt.state[cohort[0]].items():
      if value.ndim == 0:
        assert all(opt.state[p][name] is value for p in cohort), name

  model = _mlp()
  params = list(model.parameters())
  opt = OPTIMIZERS[kind](params)
  _train(model, opt, _inputs(2))
  assert counts(opt, params) and set(map(tuple, counts(opt, params).values())) == {(2, 2, 2, 2)}
  assert_shared(opt, params)

  _backward(model, _inputs(1, seed=5)[0])
  params[-1].grad = None
  opt.step()
  assert set(map(tuple, counts(opt, params).values())) == {(3, 3, 3, 2)}
  saved = copy.deepcopy(opt.state_dict())
  _train(model, opt, _inputs(2, seed=6))
  assert set(map(tuple, counts(opt, params).values())) == {(5, 5, 5, 4)}
  assert_shared(opt, params[:3])
  assert all(opt.state[params[-1]][name] is not opt.state[params[0]][name]
             for name in counts(opt, params))

  resumed_model = _mlp(seed=1)
  resumed = list(resumed_model.parameters())
  resumed_opt = OPTIMIZERS[kind](resumed)
  resumed_opt.load_state_dict(saved)
  _train(resumed_model, resumed_opt, _inputs(2, seed=6))
  assert counts(resumed_opt, resumed) == counts(opt, params)
  assert_shared(resumed_opt, resumed[:3])


# -- 12. fake CUDA tensors ------------------------------------------------------------------


_FAKE_CUDA_SCRIPT = textwrap.dedent('''
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from expectigrad.pytorch import Expectigrad

    with FakeTensorMode():
      try:  # no random init: a CPU-only build cannot run CUDA random kernels, even faked
        weight = torch.nn.Parameter(torch.ones(4, 3, device='cuda'))
        bias = torch.nn.Parameter(torch.zeros(4, device='cuda'))
      except Exception as error:  # noqa: BLE001
        print('FAKE_CUDA_UNAVAILABLE', type(error).__name__, error)
        raise SystemExit(0)
      opt = Expectigrad([weight, bias], lr=0.01)
      for _ in range(2):
        for p in (weight, bias):
          p.grad = torch.ones_like(p)
        opt.step()
      for p in (weight, bias):
        assert p.device.type == 'cuda', p.device
        assert {v.device.type for v in opt.state[p].values()} == {'cuda'}, opt.state[p]
      assert opt.state[weight]['1.momentum'].shape == (4, 3)
    print('FAKE_CUDA_STEPS_OK')
''')


def test_steps_on_fake_cuda_tensors_without_host_sync():
  """Expectigrad steps CUDA (fake) parameters with JAX on its CPU backend, and never syncs.

  Under FakeTensorMode every tensor is a CUDA fake tensor; reading a value
  (.item(), a Python float of a tensor) would raise. Two steps complete and
  the state lives on 'cuda'.
  """
  fake_cuda.run(_FAKE_CUDA_SCRIPT, 'FAKE_CUDA_STEPS_OK')


# -- 13. executors -------------------------------------------------------------------------


@pytest.mark.parametrize('dtype,rtol,atol', [(torch.float32, 1e-6, 1e-7),
                                             (torch.float64, 1e-12, 1e-15)])
def test_executors_agree(dtype, rtol, atol):
  """executor='jax', 'torch' and 'auto' (and the published class) agree to float rounding.

  After 10 steps the parameters agree within rtol 1e-6 in float32 (atol 1e-7
  for elements near 0) and 1e-12 in float64; the state within 10 times that.
  """
  xs = _inputs(10, dtype=dtype)
  results = {}
  for executor in ('torch', 'jax', 'auto', 'published'):
    model = _mlp(dtype=dtype)
    if executor == 'published':
      opt = Expectigrad(model.parameters(), lr=LR)
    else:
      opt = Optimizer(model.parameters(), expectigrad.expectigrad, executor=executor, lr=LR)
    _train(model, opt, xs)
    results[executor] = model, opt
  torch_model, torch_opt = results.pop('torch')
  assert not torch.equal(torch_model[0].weight, _mlp(dtype=dtype)[0].weight)
  for model, opt in results.values():
    _assert_close(model, torch_model, rtol=rtol, atol=atol)
    # The state sums squares of gradients taken at slightly different points.
    for key, value in _state_tensors(opt).items():
      torch.testing.assert_close(value, _state_tensors(torch_opt)[key], rtol=10 * rtol,
                                 atol=10 * atol)


def test_unknown_executor_raises():
  """An unknown executor name is a ValueError naming the choices."""
  with pytest.raises(ValueError, match='executor'):
    Optimizer(_mlp().parameters(), expectigrad.expectigrad, executor='cuda', lr=LR)


# -- 14. primitives the lowering lacks -------------------------------------------------------


def _cumsum_transform():
  """Scales each gradient by its running sum along the raveled tensor (lax.cumsum)."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda g: jnp.cumsum(g.ravel()).reshape(g.shape) * 0.5, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _cumsum_chain():
  return optax.chain(_cumsum_transform(), expectigrad.expectigrad(0.1, beta=0.8))


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('executor', ['auto', 'torch'])
def test_unsupported_primitive_runs_on_jax_with_one_warning(executor):
  """A chain using a primitive without a torch lowering runs on JAX, warning exactly once.

  Over several steps there is one RuntimeWarning naming the primitive, and
  the result equals the same chain run in JAX.
  """
  program = jax2torch.lower(lambda g: _cumsum_transform().update(g, optax.EmptyState())[0],
                            jax.ShapeDtypeStruct((3, 2), jnp.float64))
  assert program.unsupported == {'cumsum'}

  model = _mlp(dtype=torch.float64)
  params = list(model.parameters())
  jax_params = [jnp.asarray(p.detach().numpy()) for p in params]
  opt = Optimizer(params, _cumsum_chain(), executor=executor)
  tx = _cumsum_chain()
  jax_state = tx.init(jax_params)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    for x in _inputs(5, dtype=torch.float64):
      _backward(model, x)
      opt.step()
      updates, jax_state = tx.update([jnp.asarray(p.grad.numpy()) for p in params], jax_state)
      jax_params = optax.apply_updates(jax_params, updates)
  runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
  assert len(runtime) == 1, [str(w.message) for w in runtime]
  assert 'cumsum' in str(runtime[0].message)
  for p, expected in zip(params, jax_params):
    assert reference.max_relative_error(p.detach().numpy(), expected) < 1e-12
  assert not torch.equal(params[0], _mlp(dtype=torch.float64)[0].weight)


# -- 15. sparse gradients ------------------------------------------------------------------


@pytest.mark.parametrize('kind', FACTORY_OPTIMIZERS)
def test_sparse_embedding_gradients_match_dense(kind):
  """nn.Embedding(sparse=True) steps as the dense embedding does (float64), on every executor."""
  torch.manual_seed(0)
  sparse = torch.nn.Embedding(10, 4, sparse=True).double()
  dense = torch.nn.Embedding(10, 4).double()
  dense.load_state_dict(sparse.state_dict())
  initial = sparse.weight.detach().clone()
  optimizers = [OPTIMIZERS[kind](m.parameters()) for m in (sparse, dense)]
  for step in range(12):
    indices = torch.tensor([step % 7, (3 * step) % 7, step % 7])  # a duplicate; rows 7-9 untouched
    for module, opt in zip((sparse, dense), optimizers):
      opt.zero_grad()
      (module(indices) * torch.arange(1.0, 5.0, dtype=torch.float64)).square().sum().backward()
      assert module.weight.grad.is_sparse == (module is sparse)
      opt.step()
  torch.testing.assert_close(sparse.weight, dense.weight, rtol=1e-12, atol=1e-14)
  for name, value in optimizers[1].state[dense.weight].items():
    torch.testing.assert_close(optimizers[0].state[sparse.weight][name], value, rtol=1e-12,
                               atol=1e-14)
  assert torch.equal(sparse.weight[7:], initial[7:])
  assert not torch.equal(sparse.weight[:7], initial[:7])
