"""Every torch API this package uses that torch does not promise to keep, in one place.

Each was checked against torch :data:`CHECKED_WITH`; ``tests/test_private_torch_apis.py``
fails, naming the API, when an installed torch changes one.

==========================================================  =============================================
API                                                         used for
==========================================================  =============================================
``torch.fx.experimental.proxy_tensor.make_fx(fn,            tracing a lowered step once, on fake tensors,
tracing_mode='fake', _allow_non_fake_inputs=True)``         for Inductor (``bridges/_inductor.py``)
``torch._inductor.compile(graph, example_inputs)``          compiling that graph without Dynamo
``torch._subclasses.fake_tensor.FakeTensorMode``,           the fake inputs of that trace; recognising
``FakeTensor``; ``torch.fx.experimental.symbolic_shapes     a fake loop predicate (``jax2torch``)
.ShapeEnv``
``torch.fx.experimental.proxy_tensor.get_proxy_mode()``     whether ``make_fx`` is tracing (``jax2torch``)
``Tensor._base``                                            whether views tile one flat buffer
``torch.distributed.tensor.experimental                     constants of a lowered program meeting
.implicit_replication()``                                   DTensors (``bridges/_torch_dtensor.py``)
Dynamo runs a ``torch.optim.Optimizer`` subclass's          creating state eagerly under
``_init_group`` method eagerly                              ``torch.compile`` (``bridges/torch.py``)
==========================================================  =============================================
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.proxy_tensor import get_proxy_mode, make_fx
from torch.fx.experimental.symbolic_shapes import ShapeEnv

CHECKED_WITH = '2.13.0'

__all__ = ['CHECKED_WITH', 'FakeTensor', 'compile_fake_traced', 'implicit_replication',
           'is_tracing', 'view_base']


def is_tracing() -> bool:
  """Whether a compiler traces this call: Dynamo, or ``make_fx`` (a proxy mode is active)."""
  return torch.compiler.is_compiling() or get_proxy_mode() is not None


def view_base(tensor: torch.Tensor) -> torch.Tensor | None:
  """The tensor ``tensor`` is a view of, or None."""
  return tensor._base  # pylint: disable=protected-access


def compile_fake_traced(fn: Callable[..., Any], inputs: Sequence[torch.Tensor]
                        ) -> Callable[..., Any]:
  """``fn`` traced with ``make_fx`` on fake copies of ``inputs`` and compiled by Inductor.

  Fake tensors: tracing must not run an in-place ``fn`` a first time.
  Constants ``fn`` closes over are real tensors, hence allowed. A shape
  environment (static shapes all the same) is what lets Inductor's FX graph
  cache keep the program for the next process.
  """
  mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
  fakes = [mode.from_tensor(t, static_shapes=True) for t in inputs]
  graph = make_fx(fn, tracing_mode='fake', _allow_non_fake_inputs=True)(*fakes)
  return torch._inductor.compile(graph, fakes)  # pylint: disable=protected-access


def implicit_replication() -> ContextManager[None]:
  """A context in which plain tensors meeting DTensors count as replicated."""
  from torch.distributed.tensor.experimental import implicit_replication as replicating  # pylint: disable=import-outside-toplevel
  return replicating()
