"""DTensor parameters (FSDP2, HSDP, tensor parallel) equal one process on the full batch.

Processes on gloo over loopback, float64: only the order of the gradient
all-reduce differs from one process, so parameters and state agree to
1e-10. ``torch.distributed.checkpoint`` resumes bit-exactly on as many ranks
as saved, and on one process.
"""

import pathlib
import socket

import pytest

torch = pytest.importorskip('torch')
if not torch.distributed.is_available():
  pytest.skip('torch.distributed is not available', allow_module_level=True)
import torch.multiprocessing as mp  # noqa: E402

from tests import torch_fsdp_worker as worker  # noqa: E402

ALL = list(worker.OPTIMIZERS)
# Per layout and number of processes: the optimizers run (an elementwise chain, one with a
# global norm, and optax optimizers whose updates reduce over whole tensors or multiply
# matrices: muon's Newton-Schulz iteration).
RUNS = {
    ('fsdp', 2): ALL,
    ('hsdp', 4): ['expectigrad', 'clip_by_global_norm + expectigrad', 'optax.lamb'],
    ('tp', 2): ['expectigrad', 'clip_by_global_norm + expectigrad', 'optax.lamb',
                'optax.adafactor', 'optax.contrib.muon'],
}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _single_process(name: str) -> dict:
  make, compiled = worker.OPTIMIZERS[name]
  model = worker.make_model()
  optimizer = make(model.parameters())
  worker.train(model, optimizer, compiled)
  return worker.snapshot(model, optimizer)


def _assert_same(got: dict, want: dict, rtol: float = 1e-10, atol: float = 1e-12) -> None:
  assert len(got['params']) == len(want['params'])
  for a, b in zip(got['params'], want['params']):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
  for a, b in zip(got['state'], want['state']):
    assert set(a) == set(b)
    for name in a:
      torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize('layout, world', list(RUNS))
def test_sharded_training_equals_one_process(layout, world, tmp_path):
  out = tmp_path / 'rank0.pt'
  names = RUNS[layout, world]
  mp.spawn(worker.train_all, args=(world, _free_port(), layout, names, str(out)), nprocs=world,
           join=True)
  results = torch.load(out, weights_only=True)
  for name in names:
    _assert_same(results[name], _single_process(name))


def test_state_is_sharded_like_the_parameters(tmp_path):
  """Each rank holds 1/N of every per-element state tensor, as torch.optim.Adam's state."""
  out = tmp_path / 'placements.pt'
  mp.spawn(_placements, args=(2, _free_port(), str(out)), nprocs=2, join=True)
  for param, state in torch.load(out, weights_only=True):
    for name, (placements, local_shape) in state.items():
      if name.split('.')[-1] == 'count':
        assert placements is None   # a step count: a plain 0-d tensor
      else:
        assert (placements, local_shape) == param, name


def _placements(rank: int, world: int, port: int, out: str) -> None:
  worker._init(rank, world, port)  # pylint: disable=protected-access
  try:
    model = worker.make_model()
    part = worker.shard(model, 'fsdp', rank, world)
    optimizer = worker.OPTIMIZERS['expectigrad'][0](model.parameters())
    worker.train(model, optimizer, False, part, slice(0, 1))
    describe = lambda t: ((repr(t.placements), tuple(t.to_local().shape))  # noqa: E731
                          if hasattr(t, 'placements') else (None, tuple(t.shape)))
    found = [(describe(p), {k: describe(v) for k, v in optimizer.state[p].items()})
             for p in model.parameters()]
    if rank == 0:
      torch.save(found, out)
  finally:
    torch.distributed.destroy_process_group()


def test_distributed_checkpoint_resumes_bit_exactly(tmp_path):
  out = tmp_path / 'checkpoint.pt'
  directory = tmp_path / 'dcp'
  mp.spawn(worker.checkpoint, args=(2, _free_port(), str(directory), str(out)), nprocs=2,
           join=True)
  result = torch.load(out, weights_only=True)
  _assert_same(result['loaded'], result['saved'], rtol=0, atol=0)
  _assert_same(result['resumed'], result['uninterrupted'], rtol=0, atol=0)

  # On one process, unsharded: the saved state exactly, then the same run.
  model = worker.make_model()
  optimizer = worker.OPTIMIZERS['expectigrad'][0](model.parameters())
  worker.resume(model, optimizer, str(directory))
  _assert_same(worker.snapshot(model, optimizer), result['saved'], rtol=0, atol=0)
  worker.train(model, optimizer, False, steps=slice(3, None))
  _assert_same(worker.snapshot(model, optimizer), result['uninterrupted'])
  _assert_same(worker.snapshot(model, optimizer), _single_process('expectigrad'))


def test_docs_memory_table_is_measured():
  """docs/performance.md quotes benchmarks/torch_state_memory.py's table (nothing in it is timed)."""
  from benchmarks import torch_state_memory  # pylint: disable=import-outside-toplevel
  docs = (pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'performance.md').read_text()
  quoted = docs.split('<!-- torch-state-memory -->\n')[1].split('<!-- /torch-state-memory -->')[0]
  assert quoted.strip() == torch_state_memory.table()
