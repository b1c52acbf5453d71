"""An in-place torch function compiled by Inductor, traced once without Dynamo.

``Optimizer(..., compile=True)`` compiles its step with this, not with
``torch.compile``. The step is the lowered program's interpreter: a few
thousand Python calls on ResNet-18's 62 tensors. Dynamo traced them
bytecode by bytecode and then guarded every call; ``make_fx`` runs them
once on fake tensors and hands Inductor the same aten graph. Measured on the
2-core CPU, W2 (first step cold / step): ``torch.compile`` 29.3 s / 15.2 ms,
this 15.9 s / 13.9 ms (a script of benchmarks.bench_torch's setting; see
docs/performance.md for the benchmark's figures).

Without Dynamo there are no guards, so :class:`CompiledInPlace` checks what
they would: it compiles once per layout of its arguments (strides, and which
arguments are the same tensor, since Inductor merges repeated inputs) and
relies on its caller for the rest (shapes, dtypes, devices).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.fx.experimental.proxy_tensor import make_fx


def _layout(inputs: Sequence[torch.Tensor]) -> tuple:
  """Strides of ``inputs`` and, per input, the position of its first occurrence."""
  first: dict[int, int] = {}
  return tuple((t.stride(), first.setdefault(id(t), i)) for i, t in enumerate(inputs))


class CompiledInPlace:
  """``fn(*tensors)``, which writes its results into its arguments, compiled by Inductor.

  Args:
    fn: a function of tensors returning None; it may close over constant
      tensors (they become constants of the graph).

  The caller passes tensors of the shapes, dtypes and devices of the first
  call in every later call; strides and repeated arguments may change (a new
  layout compiles again).
  """

  def __init__(self, fn: Callable[..., None]):
    self._fn = fn
    self._compiled: dict[tuple, Callable[..., None]] = {}

  def __call__(self, *inputs: torch.Tensor) -> None:
    key = _layout(inputs)
    compiled = self._compiled.get(key)
    if compiled is None:
      # Fake tensors: tracing must not run the in-place step a first time.
      # Constants the function closes over are real tensors, hence allowed.
      graph = make_fx(self._fn, tracing_mode='fake', _allow_non_fake_inputs=True)(*inputs)
      compiled = self._compiled[key] = torch._inductor.compile(graph, list(inputs))
    compiled(*inputs)
