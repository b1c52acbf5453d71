"""An in-place torch function compiled by Inductor, traced once without Dynamo.

The torch bridge compiles its step with this, not by letting Dynamo trace
it. The step is the lowered program's interpreter: a few thousand Python
calls on ResNet-18's 62 tensors. Dynamo traced them bytecode by bytecode
and then guarded every call; ``make_fx`` runs them once on fake tensors and
hands Inductor the same aten graph. Measured on the 2-core CPU, W2 (first
step cold / step): ``torch.compile`` 29.3 s / 15.2 ms, this 13.3 s / 13.2 ms,
and 1.2 s from Inductor's cache in a second process (a script in
benchmarks.bench_torch's setting; docs/performance.md has the benchmark's
figures).

Without Dynamo there are no guards, so :class:`CompiledInPlace` checks what
they would: it compiles once per layout of its arguments (strides, and which
arguments are the same tensor, since Inductor merges repeated inputs) and
relies on its caller for the rest (shapes, dtypes, devices).

Inside a caller's ``torch.compile`` (a user compiling ``opt.step`` or a
training step), a :class:`CompiledInPlace` is one opaque custom op,
``expectigrad::compiled_in_place``: the caller's compile does not trace the
body, which is compiled here on its first run.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Callable, Sequence

import torch

from expectigrad import _private_torch

# key -> live CompiledInPlace, for the custom op (its arguments are tensors and ints).
_REGISTRY: weakref.WeakValueDictionary[int, CompiledInPlace] = weakref.WeakValueDictionary()
_KEYS = itertools.count()


@torch.library.custom_op('expectigrad::compiled_in_place', mutates_args=('written',))
def _compiled_in_place(key: int, written: list[torch.Tensor], read: list[torch.Tensor]) -> None:
  """Runs the :class:`CompiledInPlace` registered under ``key``."""
  _REGISTRY[key].run(*written, *read)


@_compiled_in_place.register_fake
def _(key: int, written: list[torch.Tensor], read: list[torch.Tensor]) -> None:
  del key, written, read  # it only writes into ``written``


def _layout(inputs: Sequence[torch.Tensor]) -> tuple:
  """Strides of ``inputs`` and, per input, the position of its first occurrence."""
  first: dict[int, int] = {}
  return tuple((t.stride(), first.setdefault(id(t), i)) for i, t in enumerate(inputs))


class CompiledInPlace:
  """``fn(*tensors)``, which writes into its first ``n_written`` arguments, compiled by Inductor.

  Args:
    fn: a function of tensors returning None; it may close over constant
      tensors (they become constants of the graph).
    n_written: how many leading arguments ``fn`` writes into.

  The caller passes tensors of the shapes, dtypes and devices of the first
  call in every later call; strides and repeated arguments may change (a new
  layout compiles again).
  """

  def __init__(self, fn: Callable[..., None], n_written: int):
    self._fn = fn
    self._n_written = n_written
    self._compiled: dict[tuple, Callable[..., None]] = {}
    self.key = next(_KEYS)
    _REGISTRY[self.key] = self

  def __call__(self, *inputs: torch.Tensor) -> None:
    if torch.compiler.is_dynamo_compiling():
      n = self._n_written
      torch.ops.expectigrad.compiled_in_place(self.key, list(inputs[:n]), list(inputs[n:]))
    else:
      self.run(*inputs)

  def run(self, *inputs: torch.Tensor) -> None:
    """Runs the compiled function, compiling it first for a new layout."""
    key = _layout(inputs)
    compiled = self._compiled.get(key)
    if compiled is None:
      compiled = self._compiled[key] = _private_torch.compile_fake_traced(self._fn, inputs)
    compiled(*inputs)
