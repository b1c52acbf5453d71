"""The torch APIs torch does not promise to keep (``expectigrad/_private_torch.py``) still work.

One test per API, each failing with the API's name: when a new torch
changes one, this file says which, before the bridge misbehaves.
"""

import inspect

import pytest

torch = pytest.importorskip('torch')

from expectigrad import _private_torch  # noqa: E402


def test_make_fx_traces_on_fake_tensors_and_inductor_compiles_the_graph():
  """make_fx(..., tracing_mode='fake', _allow_non_fake_inputs=True) and torch._inductor.compile."""
  x = torch.arange(4.0)
  constant = torch.tensor(2.0)  # a real tensor the function closes over

  def double_in_place(t):
    t.mul_(constant)

  _private_torch.compile_fake_traced(double_in_place, [x])(x)
  assert x.tolist() == [0.0, 2.0, 4.0, 6.0], 'make_fx / torch._inductor.compile changed'


def test_get_proxy_mode_tells_make_fx_tracing():
  """torch.fx.experimental.proxy_tensor.get_proxy_mode() is set while make_fx traces."""
  from torch.fx.experimental.proxy_tensor import make_fx  # pylint: disable=import-outside-toplevel
  seen = []
  make_fx(lambda t: seen.append(_private_torch.is_tracing()) or t + 1)(torch.ones(2))
  assert seen == [True] and not _private_torch.is_tracing(), 'get_proxy_mode changed'


def test_fake_tensors_are_recognised():
  """torch._subclasses.fake_tensor.FakeTensor / FakeTensorMode."""
  with _private_torch.FakeTensorMode():
    fake = torch.ones(2)
  assert isinstance(fake, _private_torch.FakeTensor), 'FakeTensor changed'


def test_a_view_knows_its_base():
  """Tensor._base: the tensor a view was made from."""
  flat = torch.zeros(6)
  first, second = flat.split([2, 4])
  assert _private_torch.view_base(first) is flat and _private_torch.view_base(second) is flat, \
      'Tensor._base changed'
  assert _private_torch.view_base(flat) is None


def test_implicit_replication_is_a_context():
  """torch.distributed.tensor.experimental.implicit_replication."""
  if not torch.distributed.is_available():
    pytest.skip('torch.distributed is not available')
  with _private_torch.implicit_replication():
    pass


def test_dynamo_runs_an_optimizers_init_group_eagerly():
  """Dynamo's optimizer handling special-cases a method named ``_init_group``."""
  from torch._dynamo.variables import optimizer  # pylint: disable=import-outside-toplevel
  assert '_init_group' in inspect.getsource(optimizer), \
      "torch._dynamo.variables.optimizer no longer handles '_init_group'"

