"""How the torch optimizer runs a step: the lowered chains, the path each step takes, the flat state.

:class:`Executor` lowers an optimizer's chain once per set of parameter
shapes (:class:`._torch_chain.LoweredChain`) and steps a cohort of
parameters (those stepped together) on one of these paths:

- the JAX executor (:mod:`._torch_jax`): the CPU default, eager, for any
  chain, and the JAX runtime for a chain with a primitive the lowering
  lacks (:func:`runs_in_jax`, the rule Keras on torch follows too);
- the flat in-place path (:mod:`._torch_flat`): eager elsewhere, for
  elementwise chains;
- the lowered program compiled by Inductor (``compile=True``, or one opaque
  op inside the caller's ``torch.compile``);
- the lowered program per tensor, eagerly, for any other chain;
- DTensor parameters (:mod:`._torch_dtensor`): their local shards, or the
  DTensors themselves.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Sequence

import optax
import torch

from expectigrad.bridges import _torch_dtensor, _torch_flat, _torch_jax, _torch_state
from expectigrad.bridges._torch_chain import LoweredChain

EXECUTORS = ('auto', 'torch', 'jax')
# What ``executor='auto'`` runs for CPU parameters outside ``torch.compile``:
# the JAX executor, the fastest path there without compiling (see
# docs/performance.md). Elsewhere 'auto' runs the lowered program.
CPU_DEFAULT = 'jax'

MakeTransform = Callable[[tuple], Callable[[dict], optax.GradientTransformation]]


@functools.lru_cache(maxsize=None)
def jax_runs_on(device: torch.device) -> bool:
  """Whether the installed jaxlib has a backend for tensors on ``device``.

  The package installs a CPU-only jaxlib; CUDA needs ``jax[cuda12]``. torch's
  ``cuda`` is JAX's ``gpu`` platform (CUDA or ROCm).
  """
  import jax  # pylint: disable=import-outside-toplevel
  if device.type == 'cpu':
    return True
  # JAX's default backend is its accelerator when it has one.
  return {'cuda': 'gpu'}.get(device.type, device.type) in {d.platform for d in jax.devices()}


def _check_jax_backend(chain: LoweredChain, executor: str) -> None:
  """Raises where a step would need the JAX runtime on a device it has no backend for.

  Args:
    chain: the lowered chain about to step (its device).
    executor: the optimizer's executor.

  Raises:
    NotImplementedError: naming the primitives, for a chain the lowering
      lacks primitives of (elsewhere it falls back to the JAX runtime).
    RuntimeError: for ``executor='jax'``, saying what to install.
  """
  if jax_runs_on(chain.device):
    return
  device = chain.device.type
  if chain.unsupported:
    raise NotImplementedError(
        f'this chain uses the JAX primitive(s) {", ".join(sorted(chain.unsupported))}, which '
        f'the torch lowering lacks, and the installed jaxlib has no {device} backend to run '
        f'it on instead: keep these parameters on the CPU, or install a jaxlib for {device} '
        '(for CUDA: pip install -U "jax[cuda12]").')
  if executor == 'jax':
    raise RuntimeError(
        f"executor='jax' runs the chain on the JAX runtime, and the installed jaxlib has no "
        f'{device} backend: install one (for CUDA: pip install -U "jax[cuda12]"), or use '
        "executor='torch' (or 'auto'), which runs the lowered program on any device.")


def runs_in_jax(chain: LoweredChain, executor: str, warned: set[str], compiled: bool = False
                ) -> bool:
  """Whether a step of ``chain`` runs on the JAX runtime: the rule of every torch executor.

  The torch optimizer and Keras on the torch backend both follow it. Inside
  ``torch.compile`` the lowered program runs. A chain with a primitive the
  lowering lacks runs on the JAX runtime, with one warning per ``warned``
  set, where JAX has a backend for its device. ``executor='auto'`` runs
  CPU parameters on the JAX runtime (``CPU_DEFAULT``) unless compiled.

  Args:
    chain: the lowered chain about to step.
    executor: ``'auto'``, ``'torch'`` or ``'jax'``.
    warned: the messages already warned about (updated).
    compiled: whether the caller compiles its step (``compile=True``).

  Raises:
    NotImplementedError: for a chain with primitives the lowering lacks,
      inside ``torch.compile`` or on a device JAX has no backend for.
    RuntimeError: for ``executor='jax'`` on a device JAX has no backend for.
  """
  if torch.compiler.is_dynamo_compiling():
    if chain.unsupported:
      raise NotImplementedError(
          f'this chain uses {sorted(chain.unsupported)}, which the torch lowering lacks; '
          'it cannot run inside torch.compile.')
    return False
  _check_jax_backend(chain, executor)
  if chain.unsupported:
    message = ', '.join(sorted(chain.unsupported))
    if message not in warned:
      warned.add(message)
      warnings.warn(f'no torch lowering for the JAX primitive(s) {message}: this chain '
                    'runs on the JAX runtime.', RuntimeWarning, stacklevel=5)
    return True
  if executor == 'auto':
    return chain.device.type == 'cpu' and CPU_DEFAULT == 'jax' and not compiled
  return executor == 'jax'


class Executor:
  """Lowers one optimizer's chain and steps its cohorts (see the module docstring).

  Args:
    make: ``make(static)`` -> a function of the traced hyperparameters (a
      dict) returning the transformation, for the static ones given.
    executor: ``'auto'``, ``'torch'`` or ``'jax'``.
    compile: run the lowered step compiled by Inductor.
  """

  def __init__(self, make: MakeTransform, executor: str, compile: bool):  # pylint: disable=redefined-builtin
    self._make, self._executor, self._compile = make, executor, compile
    self._lowered: dict[tuple, LoweredChain] = {}
    self._jax_chains: dict[int, _torch_jax.JaxChain] = {}  # per lowered chain
    self._cohorts: dict[tuple, Any] = {}  # JAX or flat torch state, per parameter set
    self._torch_flat_chains: dict[tuple, _torch_flat.FlatChain] = {}
    # (chain, shard shapes) -> the chain over DTensor parameters' shards and its flat
    # trace, or None where it steps the DTensors themselves (see _on_shards).
    self._shard_chains: dict[tuple, tuple | None] = {}
    self._warned: set[str] = set()

  @property
  def lowered(self) -> tuple[LoweredChain, ...]:
    """Every chain lowered so far (one per set of parameter shapes, dtype and device)."""
    return tuple(self._lowered.values())

  def chain(self, hyper_names: tuple, static: tuple, params: Sequence[torch.Tensor]
            ) -> LoweredChain:
    """The chain lowered for these parameters' shapes and dtype (traced once).

    Raises:
      RuntimeError: inside ``torch.compile``, for parameters not seen before
        (JAX cannot be traced by dynamo; run one eager step first).
    """
    shapes = tuple(tuple(p.shape) for p in params)
    key = (hyper_names, static, params[0].dtype, params[0].device, shapes)
    if key not in self._lowered:
      if torch.compiler.is_dynamo_compiling():
        raise RuntimeError(
            'this set of parameters has not been lowered yet, and JAX cannot run inside '
            'torch.compile: run one optimizer step eagerly first (parameters without a '
            'gradient, or a changed non-numeric hyperparameter, need a new lowering).')
      self._lowered[key] = LoweredChain(self._make(static), hyper_names, shapes,
                                        [params[0].dtype] * len(shapes), params[0].device)
    return self._lowered[key]

  def prepare(self, params: list[torch.Tensor], arrays: list[torch.Tensor], traced: dict,
              static: tuple) -> None:
    """Lowers a cohort's chain, and for DTensor parameters the chain over their shards.

    Called eagerly before every step (under ``torch.compile`` too: see the
    torch optimizer's ``_init_group``), so that a step never lowers (JAX
    cannot run inside ``torch.compile``). Arguments as for :meth:`step`.
    """
    self.chain(tuple(sorted(traced)), static, arrays)
    self._on_shards(params, arrays, traced, static)

  def init_state(self, state: _torch_state.State, params: list[torch.Tensor],
                 arrays: list[torch.Tensor], hyper: list[torch.Tensor], traced: dict,
                 static: tuple) -> None:
    """Creates the state of a cohort that never stepped (after :meth:`prepare`)."""
    sharded = self._on_shards(params, arrays, traced, static)
    chain, arrays = ((self.chain(tuple(sorted(traced)), static, arrays), arrays)
                     if sharded is None else (sharded[0], sharded[2]))
    _torch_state.init_state(state, chain, hyper, params, arrays)

  def step(self, state: _torch_state.State, params: list[torch.Tensor],
           arrays: list[torch.Tensor], hyper: list[torch.Tensor], grads: list[torch.Tensor],
           traced: dict, static: tuple) -> None:
    """One step of a cohort, in place: its parameters and ``state`` (``optimizer.state``).

    Args:
      state: ``optimizer.state``, holding the cohort's state.
      params: the cohort's parameters.
      arrays: the parameters as the chain sees them (real views of complex ones).
      hyper: the traced hyperparameters' tensors, in sorted name order.
      grads: the gradients, as ``arrays`` are seen.
      traced, static: the group's hyperparameters (names -> values).
    """
    names = tuple(sorted(traced))
    chain = self.chain(names, static, arrays)
    if _torch_dtensor.is_distributed(params[0]):
      self._step_distributed(state, chain, params, arrays, hyper, grads, traced, static)
      return
    if runs_in_jax(chain, self._executor, self._warned, compiled=self._compile):
      self._jax_cohort(chain, params).step(state, arrays, traced, grads)
      return
    if not torch.compiler.is_dynamo_compiling() and not self._compile:
      lean = self._torch_flat_chain(chain, names, static, arrays)
      if lean.usable:
        self._lean_cohort(state, lean, params, arrays).step(arrays, hyper, grads)
        return
    targets = _torch_state.targets(state, chain, params)
    # Inside a caller's torch.compile the step is one opaque op, compiled on
    # its own (see _inductor), except for complex parameters: Inductor cannot
    # functionalize an op writing into a view of a complex graph input, so
    # the caller's compile traces their step.
    opaque = torch.compiler.is_dynamo_compiling() and not params[0].is_complex()
    if self._compile or opaque:
      chain.compiled_step(*arrays, *targets, *hyper, *grads)
    else:
      chain.step(arrays, targets, hyper, grads, foreach=not torch.compiler.is_dynamo_compiling())

  def _step_distributed(self, state: _torch_state.State, chain: LoweredChain,
                        params: list[torch.Tensor], arrays: list[torch.Tensor],
                        hyper: list[torch.Tensor], grads: list[torch.Tensor], traced: dict,
                        static: tuple) -> None:
    """One step of DTensor parameters (see :mod:`._torch_dtensor`).

    An elementwise chain runs on the local shards, as plain tensors do.
    Any other runs on the DTensors, one equation at a time (DTensor has no
    sharding rule for some foreach kernels, and Inductor's compile of the
    step takes no DTensors: with ``compile=True`` too), eagerly or traced
    by the caller's ``torch.compile``.

    Raises:
      NotImplementedError: for a chain with primitives the lowering lacks.
    """
    sharded = self._on_shards(params, arrays, traced, static)
    if sharded is not None:
      self._step_shards(state, *sharded, params, hyper, grads)
      return
    if chain.unsupported:
      raise NotImplementedError(
          f'this chain uses the JAX primitive(s) {", ".join(sorted(chain.unsupported))}, '
          'which the torch lowering lacks, and the JAX runtime cannot step DTensor parameters.')
    with _torch_dtensor.replicating():
      chain.step(arrays, _torch_state.targets(state, chain, params), hyper, grads,
                 per_tensor=True)

  def _on_shards(self, params: list[torch.Tensor], arrays: list[torch.Tensor], traced: dict,
                 static: tuple) -> tuple[LoweredChain, _torch_flat.FlatChain, list] | None:
    """For DTensor parameters and an elementwise chain: the chain over their local shards.

    Returns:
      ``(chain, flat chain, shards)``, the chain lowered for this rank's
      shards and its flat trace, or None for plain parameters and where the
      chain is not elementwise (it then steps the DTensors themselves).
    """
    if not _torch_dtensor.is_distributed(params[0]):
      return None
    names = tuple(sorted(traced))
    shards = [_torch_dtensor.local(a) for a in arrays]
    key = (self.chain(names, static, arrays), tuple(tuple(s.shape) for s in shards))
    if key not in self._shard_chains:  # (first met in prepare: never under Dynamo's trace)
      chain = self.chain(names, static, shards)
      flat = self._torch_flat_chain(chain, names, static, shards)
      self._shard_chains[key] = (chain, flat) if flat.usable else None
    found = self._shard_chains[key]
    return None if found is None else (*found, shards)

  def _step_shards(self, state: _torch_state.State, chain: LoweredChain,
                   flat: _torch_flat.FlatChain, shards: list[torch.Tensor],
                   params: list[torch.Tensor], hyper: list[torch.Tensor],
                   grads: list[torch.Tensor]) -> None:
    """One step of DTensor parameters on their local shards (an elementwise chain)."""
    grads = [_torch_dtensor.local(g) for g in grads]
    if not torch.compiler.is_dynamo_compiling() and not self._compile:
      wrap = lambda shard, owner: (  # noqa: E731
          shard if owner is None else _torch_dtensor.wrap_like(shard, params[owner]))
      self._lean_cohort(state, flat, params, shards, wrap).step(shards, hyper, grads)
      return
    targets = [_torch_dtensor.local(t) for t in _torch_state.targets(state, chain, params)]
    chain.compiled_step(*shards, *targets, *hyper, *grads)

  def _cached_cohort(self, chain: Any, params: list[torch.Tensor], make: Callable[[], Any]) -> Any:
    """The flat state of these parameters, made by ``make`` if they did not step together before.

    A new cohort forgets the cached ones it shares a parameter with, so that
    their buffers are freed once no view of them remains.
    """
    key = tuple(id(p) for p in params)
    cohort = self._cohorts.get(key)
    if cohort is None or cohort.chain is not chain:
      for other in [k for k in self._cohorts if set(k) & set(key)]:
        del self._cohorts[other]
      cohort = self._cohorts[key] = make()
    return cohort

  def _jax_cohort(self, chain: LoweredChain, params: list[torch.Tensor]) -> _torch_jax.Cohort:
    """The JAX state of these parameters (the JAX executor's), its chain jitted once."""
    if id(chain) not in self._jax_chains:  # the lowered chains live as long as the executor
      self._jax_chains[id(chain)] = _torch_jax.JaxChain(chain)
    jax_chain = self._jax_chains[id(chain)]
    return self._cached_cohort(jax_chain, params, lambda: _torch_jax.Cohort(jax_chain, params))

  def _lean_cohort(self, state: _torch_state.State, lean: _torch_flat.FlatChain,
                   params: list[torch.Tensor], arrays: list[torch.Tensor],
                   wrap: Callable[[torch.Tensor, int | None], torch.Tensor] | None = None
                   ) -> _torch_flat.Cohort:
    """The flat torch state of these parameters, ``state[p]`` holding its views.

    ``wrap`` makes what ``state`` holds of each view (DTensors over the
    shards of DTensor parameters, whose ``arrays`` are the shards).
    """
    cohort = self._cached_cohort(lean, params, lambda: _torch_flat.Cohort(lean))
    leaves = lean.tree.state
    held = [state[params[0 if leaf.owner is None else leaf.owner]][leaf.name] for leaf in leaves]
    shared = all(state[p][leaf.name] is tensor for leaf, tensor in zip(leaves, held)
                 if leaf.owner is None for p in params)
    if not (shared and cohort.intact(held)):
      held = [_torch_dtensor.local(t) for t in held]
      for leaf, tensor in zip(leaves, cohort.adopt(held, arrays, wrap)):
        for p in (params if leaf.owner is None else [params[leaf.owner]]):
          state[p][leaf.name] = tensor
    return cohort

  def _torch_flat_chain(self, chain: LoweredChain, names: tuple, static: tuple,
                        arrays: Sequence[torch.Tensor]) -> _torch_flat.FlatChain:
    """The chain traced over one flat vector laid out for these parameters (see _torch_flat)."""
    key = (id(chain), tuple(a.numel() for a in arrays))
    if key not in self._torch_flat_chains:
      self._torch_flat_chains[key] = _torch_flat.FlatChain(
          self._make(static), names, chain, _torch_flat.Layout(key[1]), arrays[0].dtype)
    return self._torch_flat_chains[key]
