"""What one optimizer step does on a GPU, measured without one: fake CUDA tensors and a launch model.

Parameters and gradients are fake CUDA tensors (``FakeTensorMode``: nothing
is computed, no GPU is needed). :class:`Counter`, a dispatch mode, sees every
aten call of one step and reports:

- **launches**: one per kernel call, and for each ``torch._foreach_*`` /
  ``_fused_*`` call what ATen's multi-tensor apply launches: on its fast route
  (one device and dtype per list, dense tensors, equal sizes across lists, no
  integer tensor with a float scalar or a division) one launch per 320 chunks
  of 65,536 elements or per ``_MAX_TENSORS`` tensors, whichever is more;
  otherwise one per tensor (ATen's ``ForeachUtils.h`` and
  ``MultiTensorApply.cuh``; a model, not a measurement);
- **bytes per element**: each kernel reads every tensor argument, writes the
  ones it mutates (counted again) and its fresh results;
- **transient**: the peak bytes of storages created during the step and
  alive at once, over the parameters' bytes;
- **syncs** (device-to-host reads) and **transfers** (host-device copies).

Usage: ``JAX_PLATFORMS=cpu python -m benchmarks.gpu_step`` prints the table
for Expectigrad and torch's and Keras's Adam; tests/test_torch_gpu_model.py
holds the targets.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any, Callable, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks import common


# W1: one 4M-element tensor; W2: ResNet-18's 62 shapes at 0.58x width (4.0M elements).
WORKLOADS = {'W1': [(4_194_304,)], 'W2': common.resnet18_shapes(0.58)}

# Ops that launch nothing: views, metadata, allocation without initialisation.
_NO_KERNEL = frozenset({
    'view', '_unsafe_view', 'expand', 'detach', 'alias', 'as_strided', 'split', 'split_with_sizes',
    'unbind', 'permute', 't', 'transpose', 'squeeze', 'unsqueeze', 'slice', 'select', 'reshape',
    'view_as_real', 'view_as_complex', 'empty', 'empty_strided', 'empty_like', 'new_empty',
    'new_empty_strided', 'lift_fresh', 'narrow', 'expand_as', 'view_as', 'resolve_conj',
    'resolve_neg', '_reshape_alias', 'set_', 'result_type', 'is_same_size', 'sym_size',
    'sym_stride', 'sym_numel', 'sym_storage_offset', 'dim', 'size', 'stride', 'numel',
    'is_floating_point', 'device', '_record_function_enter_new', '_record_function_exit',
    'record_stream',
})
_SYNCS = frozenset({'_local_scalar_dense', 'item', 'is_nonzero', 'nonzero', 'equal', 'allclose',
                    'masked_select', 'unique', '_unique2', 'repeat_interleave'})
_CHUNK, _BLOCKS = 65536, 320
_MAX_TENSORS = (110, 64, 48, 36, 30)  # per launch, by the number of tensor lists


def _tensors(value: Any) -> list[torch.Tensor]:
  return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _nbytes(t: torch.Tensor) -> int:
  return t.numel() * t.element_size()


def _foreach_launches(name: str, args: Sequence[Any]) -> int:
  """Launches of one foreach/fused call under ATen's fast-route rules (see the module docstring)."""
  lists = [a for a in args if isinstance(a, (list, tuple)) and a
           and all(isinstance(t, torch.Tensor) for t in a)]
  scalars = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
  first = lists[0]
  per_list_dtype = name.startswith('_foreach_copy')
  dtypes = [{t.dtype for t in lst} for lst in lists]
  fast = all(len(d) == 1 for d in dtypes) and (per_list_dtype or len(set().union(*dtypes)) == 1)
  fast &= len({t.device for lst in lists for t in lst}) == 1
  fast &= all(t.is_contiguous() for lst in lists for t in lst)
  fast &= all(a.shape == b.shape for lst in lists[1:] for a, b in zip(first, lst))
  integer = not first[0].dtype.is_floating_point
  fast &= not (integer and ('div' in name or any(isinstance(s, float) for s in scalars)))
  if not fast and not name.startswith('_fused_'):
    return len(first)
  chunks = sum(math.ceil(t.numel() / _CHUNK) for t in first)
  depth = min(len(lists) + (0 if name.endswith('_') else 1), len(_MAX_TENSORS))
  return max(1, math.ceil(chunks / _BLOCKS), math.ceil(len(first) / _MAX_TENSORS[depth - 1]))


class Counter(TorchDispatchMode):
  """Counts what a region launches on the device, the bytes it moves, its syncs and transfers."""

  def __init__(self):
    super().__init__()
    self.launches = self.bytes = self.syncs = self.transfers = 0

  def __torch_dispatch__(self, func, types, args=(), kwargs=None):
    kwargs = kwargs or {}
    out = func(*args, **kwargs)
    name = func.overloadpacket.__name__
    inputs, outputs = _tensors((args, kwargs)), _tensors(out)
    devices = {t.device.type for t in inputs + outputs}
    if name in _SYNCS:
      self.syncs += 'cuda' in {t.device.type for t in inputs}
    elif name in ('_to_copy', 'copy_', '_foreach_copy_') and {'cpu', 'cuda'} <= devices:
      self.transfers += 1
    elif name not in _NO_KERNEL and not func.is_view and 'cuda' in devices:
      foreach = name.startswith('_foreach_') or name.startswith('_fused_')
      self.launches += _foreach_launches(name, args) if foreach else 1
      self.bytes += self._traffic(func, args, kwargs, out)
    return out

  @staticmethod
  def _traffic(func, args, kwargs, out) -> int:
    schema = func._schema
    bound = list(args) + [kwargs.get(a.name) for a in schema.arguments[len(args):]]
    total = 0
    for argument, value in zip(schema.arguments, bound):
      written = argument.alias_info is not None and argument.alias_info.is_write
      total += sum(_nbytes(t) for t in _tensors(value)) * (2 if written else 1)
    fresh = [r for r in schema.returns if r.alias_info is None]
    return total + (sum(_nbytes(t) for t in _tensors(out)) if fresh else 0)


class Peak(TorchDispatchMode):
  """The peak bytes of storages created inside the region and alive at once."""

  def __init__(self):
    super().__init__()
    self.peak = 0
    self._tracked: dict[int, tuple[StorageWeakRef, int]] = {}

  def __torch_dispatch__(self, func, types, args=(), kwargs=None):
    out = func(*args, **(kwargs or {}))
    seen = {StorageWeakRef(t.untyped_storage()).cdata for t in _tensors((args, kwargs))}
    for t in _tensors(out):
      ref = StorageWeakRef(t.untyped_storage())
      if ref.cdata not in seen and ref.cdata not in self._tracked:
        self._tracked[ref.cdata] = (ref, t.untyped_storage().nbytes())
    self._tracked = {k: v for k, v in self._tracked.items() if not v[0].expired()}
    self.peak = max(self.peak, sum(n for _, n in self._tracked.values()))
    return out


def measure(step: Callable[[], Any], n_elements: int, element_size: int = 4) -> dict[str, float]:
  """The third call of ``step`` counted, the fourth's peak transient memory (state built before)."""
  step()
  step()
  counter, peak = Counter(), Peak()
  with counter:
    step()
  with peak:
    step()
  return dict(launches=counter.launches, bytes_per_element=counter.bytes / n_elements,
              transient=peak.peak / (n_elements * element_size), syncs=counter.syncs,
              transfers=counter.transfers)


def torch_step(make: Callable[[list], Any], shapes: Sequence[tuple[int, ...]]) -> dict:
  """:func:`measure` of ``make(params).step()`` on fake CUDA parameters of these shapes."""
  with FakeTensorMode():
    params = [torch.nn.Parameter(torch.zeros(s, device='cuda')) for s in shapes]
    for p in params:
      p.grad = torch.ones_like(p)
    optimizer = make(params)
    return measure(optimizer.step, sum(p.numel() for p in params))


def keras_step(name: str, shapes: Sequence[tuple[int, ...]]) -> dict:
  """:func:`measure` of a Keras optimizer's ``apply`` on fake CUDA variables (KERAS_BACKEND=torch).

  Keras asks torch for its device and copies with ``Tensor.copy_``, both of
  which a CPU-only torch refuses for fake CUDA tensors; both are answered here
  as a CUDA build would (device cuda:0; the same aten copy).
  """
  import keras  # pylint: disable=import-outside-toplevel
  from keras.src.backend.torch import core  # pylint: disable=import-outside-toplevel
  import expectigrad.tensorflow2  # pylint: disable=import-outside-toplevel
  assert keras.backend.backend() == 'torch', 'run with KERAS_BACKEND=torch'
  core.get_device = lambda: torch.device('cuda', 0)
  torch.Tensor.copy_ = lambda self, src, non_blocking=False: torch.ops.aten.copy_.default(
      self, src, non_blocking)
  make = {'keras Adam': lambda: keras.optimizers.Adam(1e-3),
          'expectigrad.tensorflow2.Expectigrad': lambda: expectigrad.tensorflow2.Expectigrad(1e-3)}
  with FakeTensorMode():
    variables = [keras.Variable(torch.nn.Parameter(torch.zeros(s, device='cuda')))
                 for s in shapes]
    gradients = [torch.ones(s, device='cuda') for s in shapes]
    optimizer = make[name]()
    return measure(lambda: optimizer.apply(gradients, variables),
                   sum(math.prod(s) for s in shapes))


TORCH_OPTIMIZERS: dict[str, Callable[[list], Any]] = {
    'expectigrad.pytorch.Expectigrad': lambda ps: __import__(
        'expectigrad.pytorch', fromlist=['Expectigrad']).Expectigrad(ps, lr=1e-3),
    'torch Adam(foreach=True)': lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
    'torch Adam(fused=True)': lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
}
KERAS_OPTIMIZERS = ('expectigrad.tensorflow2.Expectigrad', 'keras Adam')


def keras_rows() -> dict[tuple[str, str], dict]:
  """Every Keras row, measured in a process of its own with ``KERAS_BACKEND=torch``."""
  env = {**os.environ, 'KERAS_BACKEND': 'torch', 'JAX_PLATFORMS': 'cpu'}
  done = subprocess.run([sys.executable, '-m', 'benchmarks.gpu_step', '--keras-json'],
                        env=env, capture_output=True, text=True, check=True)
  rows = json.loads(done.stdout.strip().splitlines()[-1])
  return {(w, name): row for w, name, row in rows}


def rows() -> dict[tuple[str, str], dict]:
  """Every row of the table: (workload, optimizer) -> measurements."""
  measured = {(w, name): torch_step(make, shapes)
              for w, shapes in WORKLOADS.items() for name, make in TORCH_OPTIMIZERS.items()}
  measured.update(keras_rows())
  return measured


def table(measured: dict[tuple[str, str], dict]) -> str:
  """The Markdown table of :func:`rows` (docs/pytorch.md quotes it; a test compares)."""
  lines = ['| workload | optimizer | launches | bytes / element | transient / param bytes '
           '| syncs | transfers |', '|---|---|---:|---:|---:|---:|---:|']
  for (w, name), r in sorted(measured.items()):
    lines.append(f'| {w} | {name} | {r["launches"]} | {r["bytes_per_element"]:.0f} | '
                 f'{r["transient"]:.2f} | {r["syncs"]} | {r["transfers"]} |')
  return '\n'.join(lines)


def main() -> None:
  if '--keras-json' in sys.argv:
    print(json.dumps([(w, name, keras_step(name, shapes))
                      for w, shapes in WORKLOADS.items() for name in KERAS_OPTIMIZERS]))
    return
  print(table(rows()))


if __name__ == '__main__':
  main()
