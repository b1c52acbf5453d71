"""DDP (gloo, 2 processes on loopback) and ZeroRedundancyOptimizer equal one process on the full batch."""

import socket

import pytest

torch = pytest.importorskip('torch')
import torch.multiprocessing as mp  # noqa: E402

from tests import torch_distributed_worker as worker  # noqa: E402


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def single_process_params():
  return worker.single_process()


@pytest.mark.parametrize('cpu_path', ['jax', 'torch'])
@pytest.mark.parametrize('mode', ['ddp', 'zero'])
def test_two_process_run_equals_single_process(mode, cpu_path, tmp_path, single_process_params):
  out = tmp_path / 'rank0.pt'
  mp.spawn(worker.worker, args=(2, _free_port(), mode, cpu_path, str(out)), nprocs=2, join=True)
  result = torch.load(out, weights_only=True)
  assert len(result['params']) == len(single_process_params)
  for got, want in zip(result['params'], single_process_params):
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
  assert result['state_entries'] == len(single_process_params)
