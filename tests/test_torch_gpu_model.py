"""The default torch step on a GPU, measured on fake CUDA tensors (benchmarks/gpu_step.py's model).

Targets (issue #18), for ``expectigrad.pytorch.Expectigrad`` and for Keras's
optimizer on the torch backend, on one 4M-element tensor (W1) and on
ResNet-18's 62 shapes (W2): W2 launches at most 60 and at most twice W1's;
transient memory at most twice the parameters' bytes; bytes moved per
element at most twice ``torch.optim.Adam(foreach=True)``'s, measured in the
same way; no device-to-host sync and no host-device copy once the state
exists (Keras's own iteration counter, ``iterations.assign_add(1)``, makes
one copy per step, for every Keras optimizer: at most one is allowed there).
"""

import functools
import pathlib

import pytest

from benchmarks import gpu_step


@functools.lru_cache(maxsize=None)
def _rows() -> dict:
  return gpu_step.rows()


@pytest.mark.parametrize('name,transfers', [('expectigrad.pytorch.Expectigrad', 0),
                                            ('expectigrad.tensorflow2.Expectigrad', 1)])
def test_default_step_meets_the_gpu_targets(name, transfers):
  rows = _rows()
  w1, w2 = rows['W1', name], rows['W2', name]
  assert w2['launches'] <= 60 and w2['launches'] <= 2 * w1['launches'], (w1, w2)
  for w, row in (('W1', w1), ('W2', w2)):
    adam = rows[w, 'torch Adam(foreach=True)']
    assert row['transient'] <= 2.0, (w, row)
    assert row['bytes_per_element'] <= 2 * adam['bytes_per_element'], (w, row, adam)
    assert row['syncs'] == 0 and row['transfers'] <= transfers, (w, row)


def test_keras_adam_makes_the_iteration_copy_too():
  """The one host-device copy allowed for Keras is Keras's: its own Adam makes it (and more)."""
  rows = _rows()
  assert all(rows[w, 'keras Adam']['transfers'] >= 1 for w in gpu_step.WORKLOADS)


def test_the_launch_model_batches_foreach_calls_on_the_fast_route_only():
  """The model: torch's foreach Adam batches 62 tensors into a few launches; its for-loop does not."""
  import torch  # pylint: disable=import-outside-toplevel
  shapes = gpu_step.WORKLOADS['W2']
  foreach = gpu_step.torch_step(lambda ps: torch.optim.Adam(ps, foreach=True), shapes)
  loop = gpu_step.torch_step(lambda ps: torch.optim.Adam(ps, foreach=False), shapes)
  assert foreach['launches'] < 20 < len(shapes) * 5 <= loop['launches']
  assert foreach['bytes_per_element'] == loop['bytes_per_element']  # same kernels, batched


def test_docs_table_is_what_the_model_prints():
  """docs/pytorch.md quotes benchmarks/gpu_step.py's table (deterministic: nothing is timed)."""
  docs = (pathlib.Path(__file__).parent.parent / 'docs' / 'pytorch.md').read_text()
  quoted = docs.split('<!-- gpu-step -->\n')[1].split('<!-- /gpu-step -->')[0].strip()
  assert quoted == gpu_step.table(_rows())


def test_the_per_tensor_path_batches_and_frees_intermediates():
  """A chain with a global norm runs over the group's tensors, one kernel per elementwise primitive.

  Measured on W2 before: 919 launches (comparisons, casts, selections and
  repeated-scalar additions ran tensor by tensor) and 21x the parameter
  bytes (every intermediate kept to the end of the step); now 174 (the
  global norm's per-tensor sums and their chain of additions remain) and 7x.
  """
  import optax  # pylint: disable=import-outside-toplevel
  import expectigrad  # pylint: disable=import-outside-toplevel
  from expectigrad.bridges.torch import Optimizer  # pylint: disable=import-outside-toplevel
  chain = optax.chain(optax.clip_by_global_norm(1.0), expectigrad.expectigrad(1e-3))
  row = gpu_step.torch_step(lambda ps: Optimizer(ps, chain, executor='torch'),
                            gpu_step.WORKLOADS['W2'])
  assert row['launches'] <= 200 and row['transient'] <= 8 and row['syncs'] == 0, row
