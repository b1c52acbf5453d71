"""Sparse torch gradients (nn.Embedding(sparse=True)) follow the dense update rule.

Duplicate indices are summed before squaring; rows a batch does not touch have
gradient 0, so with sparse_counter=True only touched rows are counted.
"""

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from expectigrad.pytorch import Expectigrad  # noqa: E402
from tests import reference  # noqa: E402

VOCAB, DIM, STEPS = 6, 3, 40


# Every test runs on both CPU paths of the default executor (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('torch_cpu_path')


def _batches():
  rng = np.random.default_rng(0)
  for _ in range(STEPS):
    indices = rng.integers(0, VOCAB - 2, size=5)  # the last two rows are never touched
    indices[1] = indices[0]  # always a duplicate
    yield indices, rng.normal(size=(5, DIM))


@pytest.mark.parametrize('sparse_counter', [True, False])
def test_sparse_embedding_matches_reference(sparse_counter):
  embedding = torch.nn.Embedding(VOCAB, DIM, sparse=True).double()
  with torch.no_grad():
    embedding.weight.copy_(torch.linspace(-1, 1, VOCAB * DIM, dtype=torch.float64).view(VOCAB, DIM))
  initial = embedding.weight.detach().numpy().copy()
  opt = Expectigrad(embedding.parameters(), lr=0.1, beta=0.9, eps=1e-8, sparse_counter=sparse_counter)
  dense_grads = []
  for indices, coefficients in _batches():
    opt.zero_grad()
    (embedding(torch.as_tensor(indices)) * torch.as_tensor(coefficients)).sum().backward()
    assert embedding.weight.grad.is_sparse
    opt.step()
    grad = np.zeros((VOCAB, DIM))
    np.add.at(grad, indices, coefficients)  # duplicates summed
    dense_grads.append(grad.reshape(-1))
  expected = reference.run_reference(lambda x, t: dense_grads[t - 1], initial.reshape(-1), STEPS,
                                     lr=0.1, beta=0.9, eps=1e-8, sparse_counter=sparse_counter)[-1]
  got = embedding.weight.detach().numpy().reshape(-1)
  assert reference.max_relative_error(got, expected) < 1e-10
  np.testing.assert_array_equal(embedding.weight.detach().numpy()[-2:], initial[-2:])
  if sparse_counter:
    counts = opt.state_dict()['state'][0]['0.nonzero_count'].view(VOCAB, DIM)
    touched = np.count_nonzero(np.stack(dense_grads).reshape(STEPS, VOCAB, DIM), axis=0)
    np.testing.assert_array_equal(counts.numpy(), touched)
    assert counts[-2:].sum() == 0 and counts[:-2].max() < STEPS


def test_sparse_and_dense_embeddings_agree_in_float32():
  torch.manual_seed(0)
  sparse, dense = torch.nn.Embedding(10, 4, sparse=True), torch.nn.Embedding(10, 4)
  dense.load_state_dict(sparse.state_dict())
  opts = [Expectigrad(m.parameters(), lr=0.01) for m in (sparse, dense)]
  for step in range(20):
    indices = torch.tensor([step % 7, (3 * step) % 7, step % 7])
    for module, opt in zip((sparse, dense), opts):
      opt.zero_grad()
      module(indices).square().sum().backward()
      opt.step()
  torch.testing.assert_close(sparse.weight, dense.weight, rtol=1e-6, atol=1e-7)
