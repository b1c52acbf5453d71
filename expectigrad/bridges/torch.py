"""Any optax ``GradientTransformation`` as a ``torch.optim.Optimizer``.

The update rule is never rewritten in torch: JAX traces the chain once per
set of parameter shapes, :mod:`expectigrad.jax2torch` lowers the traced
program to torch operations, and every ``step()`` runs those operations on
the parameters' own device, in place, like ``torch.optim.Adam``. The state
lives in ``optimizer.state[p]``, one dict of tensors per parameter. See
:class:`Optimizer`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import numpy as np
import optax
import torch

from expectigrad.bridges import _torch_dtensor, _conventions, _torch_chain, _torch_flat, _torch_flat_jax
from expectigrad.bridges._torch_chain import LoweredChain

# torch's names for hyperparameters -> the factory's keyword names. Keys not
# listed are passed under their own name (beta, eps, sparse_counter, ...).
TORCH_TO_OPTAX_NAMES: Mapping[str, str] = {'lr': 'learning_rate'}
# Group keys the bridge itself reads; never passed to the factory.
_BRIDGE_KEYS = frozenset({'params', 'maximize'})
EXECUTORS = ('auto', 'torch', 'jax')
# What ``executor='auto'`` runs for CPU parameters outside ``torch.compile``:
# the JAX executor, the fastest path there without compiling (see README,
# Performance). Elsewhere 'auto' runs the lowered program.
CPU_DEFAULT = 'jax'


TransformFactory = Callable[..., optax.GradientTransformation]


def _accepted_names(transform: Any, defaults: Mapping[str, Any]) -> frozenset[str]:
  """The factory's keyword names a group may set; other group keys are ignored.

  Groups also carry keys that are not hyperparameters of the transform
  (``initial_lr`` from LR schedulers, user annotations).
  """
  if isinstance(transform, optax.GradientTransformation):
    return frozenset()
  names = {TORCH_TO_OPTAX_NAMES.get(k, k) for k in defaults}
  try:
    parameters = inspect.signature(transform).parameters.values()
  except (TypeError, ValueError):  # no signature (some builtins): the defaults only
    return frozenset(names)
  return frozenset(names | {p.name for p in parameters if p.kind in (
      inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)})


def _number(value: Any) -> Any:
  """A numpy floating scalar or 0-d array as a Python float; anything else as it is."""
  if isinstance(value, (np.floating, np.ndarray)) and np.ndim(value) == 0 and (
      np.asarray(value).dtype.kind == 'f'):
    return float(value)
  return value


def _is_traced(value: Any) -> bool:
  """Real floating-point numbers enter the lowered step as 0-d tensors (edits never re-trace)."""
  if isinstance(value, torch.Tensor):
    return value.ndim == 0 and value.is_floating_point()
  return isinstance(value, float)


class Optimizer(torch.optim.Optimizer):
  """A ``torch.optim.Optimizer`` that runs an optax transformation in torch.

  ``transform`` is either a ``GradientTransformation`` (its hyperparameters
  fixed) or a factory of keyword hyperparameters such as
  :func:`expectigrad.expectigrad`. With a factory, every param group's
  values are passed to it (``lr`` as ``learning_rate``, other keys by name):
  floating-point numbers and 0-d tensors as traced 0-d tensors, so LR
  schedulers, per-group values and ``param_group`` edits take effect without
  re-tracing; other values (``sparse_counter``) are trace-time constants.

  Per param group, the parameters with a gradient are stepped together, per
  device and dtype, so tree-wide operations (``optax.clip_by_global_norm``)
  see one param group. Parameters whose ``grad`` is None are skipped and
  keep their state, step counts included. A group's ``maximize=True``
  ascends, as in ``torch.optim``. Complex parameters are optimized as pairs
  of real numbers (their ``torch.view_as_real`` view), as ``torch.optim``
  does; their state has the real view's shape.

  How a step runs (``executor``):

  - ``'torch'``: the lowered program, eagerly: for an elementwise chain
    traced over one flat vector per state leaf (``optimizer.state[p]``
    holds views of those buffers), each primitive one kernel over the
    group, in place (:mod:`._torch_flat`); otherwise each primitive one
    ``torch._foreach_*`` call over the group's tensors. Under
    ``torch.compile`` (the user's) or with ``compile=True``, Inductor fuses it.
  - ``'jax'``: the traced update on the JAX runtime, tensors crossing
    through dlpack (also used, with a warning, for a chain whose program has
    a primitive the lowering lacks).
  - ``'auto'`` (default): ``'jax'`` for CPU parameters, ``'torch'`` elsewhere
    (:func:`runs_in_jax`). Inside ``torch.compile`` the lowered program always runs.

  Args:
    params: parameters or param-group dicts, as for any torch optimizer.
    transform: an ``optax.GradientTransformation`` (or ``optax.MultiSteps``, run as
      its ``gradient_transformation()``) or a factory returning one.
    executor: ``'auto'``, ``'torch'`` or ``'jax'``.
    compile: run the lowered step compiled by Inductor, compiled on first
      use per parameter set (traced once with ``make_fx``, without Dynamo's
      per-call guards; see :mod:`._inductor`).
    **defaults: hyperparameters for the factory (torch names, e.g. ``lr``),
      and ``maximize``.

  Raises:
    TypeError: if ``transform`` is neither, hyperparameters are given with a
      fixed transformation, or a parameter is neither floating point nor complex.
    ValueError: if the factory rejects a group's hyperparameters, or
      ``executor`` is unknown.
  """

  def __init__(
      self,
      params: Iterable[Any],
      transform: Union[optax.GradientTransformation, TransformFactory],
      *,
      executor: str = 'auto',
      compile: bool = False,  # pylint: disable=redefined-builtin
      **defaults: Any,
  ):
    transform = _conventions.check_transform(transform, set(defaults) - {'maximize'})
    if executor not in EXECUTORS:
      raise ValueError(f'executor must be one of {EXECUTORS}, got {executor!r}.')
    defaults.setdefault('maximize', False)
    self._transform = transform
    self._accepted = _accepted_names(transform, defaults)
    self._executor = executor
    self._compile = bool(compile)
    # Per group, a cohort label per parameter position: parameters that have
    # always stepped together share their step counts (see ``_cohorts_of``).
    self._cohorts: list[list[int]] = []
    self._reset_caches()
    super().__init__(params, defaults)
    self._lower_groups()

  def _reset_caches(self) -> None:
    """Lowered programs and hyperparameter tensors: rebuilt on demand, never pickled."""
    self._lowered: dict[tuple, LoweredChain] = {}
    self._flat_chains: dict[int, _torch_flat_jax.FlatChain] = {}
    self._flat_cohorts: dict[tuple, Any] = {}  # JAX or torch flat state, per parameter set
    self._torch_flat_chains: dict[tuple, _torch_flat.FlatChain] = {}
    # (chain, shard shapes) -> the chain over DTensor parameters' shards and its flat
    # trace, or None where it steps the DTensors themselves (see _on_shards).
    self._shard_chains: dict[tuple, tuple | None] = {}
    self._hyper_tensors: dict[tuple, tuple[torch.Tensor, float]] = {}
    self._checked: dict[int, tuple] = {}
    self._warned: set[str] = set()

  def __getstate__(self) -> dict[str, Any]:
    state = super().__getstate__()
    state.update(_transform=self._transform, _accepted=self._accepted,
                 _executor=self._executor, _compile=self._compile, _cohorts=self._cohorts)
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    super().__setstate__(state)
    self._reset_caches()
    self._lower_groups()

  # -- hyperparameters --------------------------------------------------------

  def add_param_group(self, param_group: dict[str, Any]) -> None:
    """Adds a group after checking its parameters and hyperparameters."""
    super().add_param_group(param_group)
    index = len(self.param_groups) - 1
    try:
      for p in self.param_groups[index]['params']:
        if not (p.is_floating_point() or p.is_complex()):
          raise TypeError(f'param_groups[{index}] holds a {p.dtype} parameter; '
                          'only floating-point and complex parameters can be optimized.')
      self._hyperparameters(index)
    except Exception:
      self.param_groups.pop()
      raise
    self._cohorts.append([0] * len(self.param_groups[index]['params']))

  def _factory_arguments(self, group: Mapping[str, Any]) -> dict[str, Any]:
    """A group's factory keyword arguments (subclasses may rename keys here)."""
    named = {TORCH_TO_OPTAX_NAMES.get(k, k): v for k, v in group.items()
             if k not in _BRIDGE_KEYS}
    return {k: v for k, v in named.items() if k in self._accepted}

  def _hyperparameters(self, group_index: int, group: Mapping[str, Any] | None = None
                       ) -> tuple[dict[str, Any], tuple]:
    """The ``(traced, static)`` factory arguments of a group, checked.

    Raises:
      ValueError: naming the group, for a value out of range.
      TypeError: naming the group, for a value of the wrong type.
    """
    group = self.param_groups[group_index] if group is None else group
    if not isinstance(group.get('maximize', False), bool):
      raise TypeError(f'param_groups[{group_index}]: maximize must be a bool, '
                      f'got {group["maximize"]!r}.')
    if isinstance(self._transform, optax.GradientTransformation):
      return {}, ()
    named = {k: _number(v) for k, v in self._factory_arguments(group).items()}
    for name, value in named.items():
      if isinstance(value, torch.Tensor) and value.numel() != 1:
        torch_name = {v: k for k, v in TORCH_TO_OPTAX_NAMES.items()}.get(name, name)
        raise ValueError(f'param_groups[{group_index}]: Tensor {torch_name} must be 1-element, '
                         f'got shape {tuple(value.shape)}.')
    traced = {k: v for k, v in named.items() if _is_traced(v)}
    static = tuple((k, named[k]) for k in sorted(named) if k not in traced)
    # Under Dynamo the values were checked in _init_group, which it runs
    # eagerly; in the traced step a float it made symbolic (an lr that
    # changed) has no value to check.
    if torch.compiler.is_dynamo_compiling():
      return traced, static
    try:
      self._check_hyperparameters(group_index, traced, static)
    except (ValueError, TypeError) as error:
      raise type(error)(f'param_groups[{group_index}]: {error}') from error
    return traced, static

  def _check_hyperparameters(self, group_index: int, traced: Mapping[str, Any],
                             static: tuple) -> None:
    """Checks a group's values by calling the factory with them (never under Dynamo's trace).

    Numbers are checked whenever they change; a tensor only for its kind
    (reading its value would synchronise with its device). Subclasses that
    know their hyperparameters check them here in plain Python.
    """
    try:
      key = (tuple((k, v if not isinstance(v, torch.Tensor) else id(v))
                   for k, v in sorted(traced.items())), static)
      hash(key)
    except TypeError as error:
      raise TypeError('hyperparameters must be numbers, 0-d tensors or hashable constants, '
                      f'got {static}.') from error
    if self._checked.get(group_index) != key:
      # The factory validates concrete values; tensors stand in as 0.5.
      concrete = {k: (0.5 if isinstance(v, torch.Tensor) else float(v))
                  for k, v in traced.items()}
      self._transform(**concrete, **dict(static))
      self._checked[group_index] = key

  def _hyper_tensor(self, name: str, value: Any, device: torch.device, dtype: torch.dtype
                    ) -> torch.Tensor:
    """``value`` as a 0-d tensor on ``device``.

    A tensor is used as it is (converted if needed). A number gets a cached
    tensor, refilled when the number changes, so eager steps copy nothing to
    the device while it stays the same. Inside ``torch.compile`` a number is
    a constant of the graph, as for ``torch.optim``: pass 0-d tensors to
    change values without recompiling.
    """
    if isinstance(value, torch.Tensor):
      return value.to(device=device, dtype=dtype)
    if torch.compiler.is_dynamo_compiling():
      return torch.full((), float(value), dtype=dtype, device=device)
    key = (name, device, dtype)
    cached = self._hyper_tensors.get(key)
    if cached is None or cached[1] != float(value):
      if cached is None:
        cached = (torch.empty((), dtype=dtype, device=device), None)
      cached[0].fill_(float(value))
      cached = self._hyper_tensors[key] = (cached[0], float(value))
    return cached[0]

  # -- lowering -----------------------------------------------------------------

  def _make(self, static: tuple) -> Callable[[dict], optax.GradientTransformation]:
    if isinstance(self._transform, optax.GradientTransformation):
      return lambda hyper: self._transform
    return lambda hyper: self._transform(**hyper, **dict(static))

  def _chain(self, hyper_names: tuple, static: tuple, params: Sequence[torch.Tensor]
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

  def _lower_groups(self) -> None:
    """Lowers the chain for every group as a whole, ahead of a compiled first step."""
    for index, group in enumerate(self.param_groups):
      traced, static = self._hyperparameters(index)
      every = group['params']
      for positions in _by_kind(range(len(every)), every).values():
        self._chain(tuple(sorted(traced)), static, [_as_real(every[i]) for i in positions])

  # -- state ----------------------------------------------------------------------

  def _cohorts_of(self, group_index: int, positions: list[int]) -> list[list[int]]:
    """``positions`` (parameters of one group, device and dtype) split into cohorts.

    Shared state (a step count) is one value for all parameters stepped by
    one lowered program. Parameters that stepped on different occasions have
    different counts, so they form different cohorts; a cohort that steps
    only in part is split, and parameters without state form a new one.
    """
    group = self.param_groups[group_index]['params']
    labels = self._cohorts[group_index]
    by_label: dict[int, list[int]] = {}
    for i in positions:
      by_label.setdefault(labels[i] if len(self.state[group[i]]) else -1, []).append(i)
    for label, members in by_label.items():
      size = sum(1 for i, other in enumerate(labels)
                 if other == label and len(self.state[group[i]]))
      if label == -1 or len(members) != size:
        new = max(labels) + 1
        for i in members:
          labels[i] = new
        if label != -1:
          self._unshare([group[i] for i in members],
                        [group[i] for i, other in enumerate(labels) if other == label])
    return list(by_label.values())

  def _unshare(self, leaving: list[torch.Tensor], staying: list[torch.Tensor]) -> None:
    """Gives parameters that leave a cohort their own copy of its shared tensors.

    The members of a cohort hold one tensor per shared leaf (see
    ``_share``); once their counts can differ, they must not.
    """
    held = {id(t) for p in staying for t in self.state[p].values()}
    copies: dict[int, torch.Tensor] = {}
    for p in leaving:
      for name, tensor in self.state[p].items():
        if id(tensor) in held:
          self.state[p][name] = copies.setdefault(id(tensor), tensor.clone())

  def _share(self, chain: LoweredChain, params: list[torch.Tensor]) -> None:
    """Makes a cohort's members hold one tensor per shared leaf (its step counts).

    One tensor, read and written once per step, rather than a copy per
    parameter: on ResNet-18's 62 tensors the copies took a fifth of
    Inductor's compile time (49 -> 40 s) and 13% of the compiled step.
    ``load_state_dict`` and cohort splits give each parameter its own
    tensor; the first member's value is the cohort's.
    """
    for leaf in chain.state:
      if leaf.owner is None:
        first = self.state[params[0]][leaf.name]
        for p in params[1:]:
          if self.state[p][leaf.name] is not first:
            self.state[p][leaf.name] = first

  def _init_state(self, chain: LoweredChain, hyper: list[torch.Tensor],
                  params: list[torch.Tensor], arrays: list[torch.Tensor]) -> None:
    """Fresh state for parameters that never stepped, from the lowered ``init``.

    ``arrays`` are the parameters as the chain sees them (see :func:`_as_real`),
    or, for DTensor parameters and an elementwise chain, their local shards
    (``chain`` then is the chain over the shards): the state of a DTensor
    parameter is placed like it (see :mod:`._torch_dtensor`).
    """
    on_shards = _torch_dtensor.is_distributed(params[0]) and not (
        _torch_dtensor.is_distributed(arrays[0]))
    values = chain.init(*hyper, *arrays)
    for p in params:
      self.state[p] = {}
    for leaf, value in zip(chain.state, values):
      i = 0 if leaf.owner is None else leaf.owner
      p, shape = params[i], _torch_chain.storage_shape(leaf, arrays[i])
      tensor = _torch_chain.as_result(value, leaf.dtype, p.device, leaf.shape).reshape(
          shape).clone(memory_format=torch.contiguous_format)
      if on_shards and leaf.owner is not None:
        tensor = _torch_dtensor.wrap_like(tensor, p)
      elif _torch_dtensor.is_distributed(p) and not on_shards:
        tensor = _torch_dtensor.place_like(tensor, p)
      # A shared leaf (a step count) is one tensor held by every parameter.
      for owner in (params if leaf.owner is None else [p]):
        self.state[owner][leaf.name] = tensor

  # -- the step ----------------------------------------------------------------------

  @torch.no_grad()
  def step(self, closure: Callable[[], Any] | None = None) -> Any:
    """Performs one optimization step.

    Args:
      closure: re-evaluates the model and returns the loss (optional).

    Returns:
      The closure's loss, or None.

    Raises:
      ValueError, TypeError: if a group's hyperparameters are invalid
        (nothing changes: every group is checked first).
    """
    loss = None
    if closure is not None:
      with torch.enable_grad():
        loss = closure()
    self._init_group()
    for index in range(len(self.param_groups)):
      traced, static = self._hyperparameters(index)
      for params in self._stepping_cohorts(index):
        self._step_cohort(params, traced, static, self.param_groups[index]['maximize'])
    return loss

  def _init_group(self) -> None:
    """Checks every group, then lowers each stepping cohort's chain and creates missing state.

    Named as in ``torch.optim``: under ``torch.compile``, Dynamo runs
    ``_init_group`` eagerly instead of tracing it (as for ``torch.optim.Adam``),
    so the checks see real values, a compiled step neither compiles the
    creation of the state (W2: 310 tensors) nor recompiles once it exists,
    and a new set of parameters with gradients is lowered (JAX cannot run
    inside ``torch.compile``).

    Raises:
      ValueError, TypeError: if a group's hyperparameters are invalid
        (before anything changes).
    """
    plans = [self._hyperparameters(i) for i in range(len(self.param_groups))]
    for index, (traced, static) in enumerate(plans):
      for params in self._stepping_cohorts(index):
        chain, arrays, hyper = self._inputs(params, traced, static)
        if not self.state[params[0]]:
          sharded = self._on_shards(params, arrays, traced, static)
          if sharded is not None:
            chain, _, arrays = sharded
          self._init_state(chain, hyper, params, arrays)

  def _stepping_cohorts(self, group_index: int) -> list[list[torch.Tensor]]:
    """The group's parameters with a gradient, per device, dtype and cohort."""
    group = self.param_groups[group_index]['params']
    stepping = [i for i, p in enumerate(group) if p.grad is not None]
    return [[group[i] for i in cohort]
            for positions in _by_kind(stepping, group).values()
            for cohort in self._cohorts_of(group_index, positions)]

  def _inputs(self, params: list[torch.Tensor], traced: dict, static: tuple
              ) -> tuple[LoweredChain, list[torch.Tensor], list[torch.Tensor]]:
    """A cohort's lowered chain, parameters as the chain sees them, and hyperparameter tensors."""
    names = tuple(sorted(traced))
    arrays = [_as_real(p) for p in params]
    chain = self._chain(names, static, arrays)
    hyper = [self._hyper_tensor(k, traced[k], params[0].device, chain.hyper_dtype)
             for k in names]
    return chain, arrays, hyper

  def _step_cohort(self, params: list[torch.Tensor], traced: dict, static: tuple,
                   maximize: bool) -> None:
    chain, arrays, hyper = self._inputs(params, traced, static)
    grads = [_as_real(p.grad.to_dense() if p.grad.is_sparse else p.grad) for p in params]
    if maximize:
      grads = torch._foreach_neg(grads)
    if _torch_dtensor.is_distributed(params[0]):
      self._step_distributed(chain, params, arrays, hyper, grads, traced, static)
      return
    in_jax = self._runs_in_jax(chain)
    if in_jax and not params[0].is_complex():  # the flat executor packs real tensors
      flat = self._flat_chain(chain, tuple(sorted(traced)), static, params)
      if flat.usable:
        self._flat_cohort(flat, params).step(self.state, traced, grads)
        return
    eager = not torch.compiler.is_dynamo_compiling() and not self._compile
    if not in_jax and eager:
      lean = self._torch_flat_chain(chain, tuple(sorted(traced)), static, arrays)
      if lean.usable:
        self._lean_cohort(lean, params, arrays).step(arrays, hyper, grads)
        return
    targets = self._targets(chain, params)
    # Inside a caller's torch.compile the step is one opaque op, compiled on
    # its own (see _inductor), except for complex parameters: Inductor cannot
    # functionalize an op writing into a view of a complex graph input, so
    # the caller's compile traces their step.
    opaque = torch.compiler.is_dynamo_compiling() and not params[0].is_complex()
    if not in_jax and (self._compile or opaque):
      chain.compiled_step(*arrays, *targets, *hyper, *grads)
    else:
      chain.step(arrays, targets, hyper, grads, in_jax=in_jax,
                 foreach=not torch.compiler.is_dynamo_compiling())

  def _targets(self, chain: LoweredChain, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The state tensors a step of ``chain`` overwrites, one per state leaf (shared ones made one)."""
    self._share(chain, params)
    return [self.state[params[0 if leaf.owner is None else leaf.owner]][leaf.name]
            for leaf in chain.state]

  def _step_distributed(self, chain: LoweredChain, params: list[torch.Tensor],
                        arrays: list[torch.Tensor], hyper: list[torch.Tensor],
                        grads: list[torch.Tensor], traced: dict, static: tuple) -> None:
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
      self._step_shards(*sharded, params, hyper, grads)
      return
    if chain.unsupported:
      raise NotImplementedError(
          f'this chain uses the JAX primitive(s) {", ".join(sorted(chain.unsupported))}, '
          'which the torch lowering lacks, and the JAX runtime cannot step DTensor parameters.')
    with _torch_dtensor.replicating():
      chain.step(arrays, self._targets(chain, params), hyper, grads, per_tensor=True)

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
    shards = [_torch_dtensor.local(a) for a in arrays]
    key = (self._chain(tuple(sorted(traced)), static, arrays),
           tuple(tuple(s.shape) for s in shards))
    if key not in self._shard_chains:  # (in _init_group: never under Dynamo's trace)
      names = tuple(sorted(traced))
      chain = self._chain(names, static, shards)
      flat = self._torch_flat_chain(chain, names, static, shards)
      self._shard_chains[key] = (chain, flat) if flat.usable else None
    found = self._shard_chains[key]
    return None if found is None else (*found, shards)

  def _step_shards(self, chain: LoweredChain, flat: _torch_flat.FlatChain,
                   shards: list[torch.Tensor], params: list[torch.Tensor],
                   hyper: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """One step of DTensor parameters on their local shards (an elementwise chain)."""
    grads = [_torch_dtensor.local(g) for g in grads]
    if not torch.compiler.is_dynamo_compiling() and not self._compile:
      wrap = lambda shard, owner: (  # noqa: E731
          shard if owner is None else _torch_dtensor.wrap_like(shard, params[owner]))
      self._lean_cohort(flat, params, shards, wrap).step(shards, hyper, grads)
      return
    targets = [_torch_dtensor.local(t) for t in self._targets(chain, params)]
    chain.compiled_step(*shards, *targets, *hyper, *grads)

  def _cached_cohort(self, chain: Any, params: list[torch.Tensor], make: Callable[[], Any]) -> Any:
    """The flat state of these parameters, made by ``make`` if they did not step together before.

    A new cohort forgets the cached ones it shares a parameter with, so that
    their buffers are freed once no view of them remains.
    """
    key = tuple(id(p) for p in params)
    cohort = self._flat_cohorts.get(key)
    if cohort is None or cohort.chain is not chain:
      for other in [k for k in self._flat_cohorts if set(k) & set(key)]:
        del self._flat_cohorts[other]
      cohort = self._flat_cohorts[key] = make()
    return cohort

  def _flat_cohort(self, flat: _torch_flat_jax.FlatChain, params: list[torch.Tensor]
                   ) -> _torch_flat_jax.Cohort:
    """The flat JAX state of these parameters (the JAX executor's)."""
    return self._cached_cohort(flat, params, lambda: _torch_flat_jax.Cohort(flat, params))

  def _lean_cohort(self, lean: _torch_flat.FlatChain, params: list[torch.Tensor],
                   arrays: list[torch.Tensor],
                   wrap: Callable[[torch.Tensor, int | None], torch.Tensor] | None = None
                   ) -> _torch_flat.Cohort:
    """The flat torch state of these parameters, ``optimizer.state[p]`` holding its views.

    ``wrap`` makes what ``optimizer.state`` holds of each view (DTensors
    over the shards of DTensor parameters, whose ``arrays`` are the shards).
    """
    cohort = self._cached_cohort(lean, params, lambda: _torch_flat.Cohort(lean))
    leaves = lean.tree.state
    held = [self.state[params[0 if leaf.owner is None else leaf.owner]][leaf.name]
            for leaf in leaves]
    shared = all(self.state[p][leaf.name] is tensor for leaf, tensor in zip(leaves, held)
                 if leaf.owner is None for p in params)
    if not (shared and cohort.intact(held)):
      held = [_torch_dtensor.local(t) for t in held]
      adopted = cohort.adopt(held, arrays) if wrap is None else cohort.adopt(held, arrays, wrap)
      for leaf, tensor in zip(leaves, adopted):
        for p in (params if leaf.owner is None else [params[leaf.owner]]):
          self.state[p][leaf.name] = tensor
    return cohort

  def _flat_chain(self, chain: LoweredChain, names: tuple, static: tuple,
                  params: Sequence[torch.Tensor]) -> _torch_flat_jax.FlatChain:
    """The JAX executor's chain: the flat trace (:meth:`_torch_flat_chain`), jitted."""
    flat = self._torch_flat_chain(chain, names, static, params)
    if id(flat) not in self._flat_chains:
      self._flat_chains[id(flat)] = _torch_flat_jax.FlatChain(flat)
    return self._flat_chains[id(flat)]

  def _torch_flat_chain(self, chain: LoweredChain, names: tuple, static: tuple,
                        arrays: Sequence[torch.Tensor]) -> _torch_flat.FlatChain:
    """The chain traced over one flat vector laid out for these parameters (see _torch_flat)."""
    key = (id(chain), tuple(a.numel() for a in arrays))
    if key not in self._torch_flat_chains:
      self._torch_flat_chains[key] = _torch_flat.FlatChain(
          self._make(static), names, chain, _torch_flat.Layout(key[1]), arrays[0].dtype)
    return self._torch_flat_chains[key]

  def _runs_in_jax(self, chain: LoweredChain) -> bool:
    """Whether this step runs on the JAX runtime (see the class docstring and :func:`runs_in_jax`)."""
    return runs_in_jax(chain, self._executor, self._warned, compiled=self._compile)

  # -- state dicts ---------------------------------------------------------------------

  def optax_state(self, group_index: int = 0) -> Any:
    """The state of a param group as the optax state pytree the chain works on.

    Leaves are JAX arrays that share memory with ``optimizer.state`` through
    dlpack where XLA accepts the buffer; on a device JAX has no backend for
    (CUDA with the CPU-only jaxlib the package installs) they are copies in
    host memory. All parameters of the group must have stepped together (one
    cohort); parameters are the dict ``{'000000': p0, ...}`` in group order.

    Raises:
      ValueError: if the group's parameters have not all stepped together.
    """
    import jax  # pylint: disable=import-outside-toplevel
    params = self.param_groups[group_index]['params']
    labels = {self._cohorts[group_index][i] for i, p in enumerate(params)}
    if len(labels) != 1 or any(p not in self.state for p in params):
      raise ValueError(f'param_groups[{group_index}]: not all parameters have stepped together.')
    traced, static = self._hyperparameters(group_index)
    chain = self._chain(tuple(sorted(traced)), static, [_as_real(p) for p in params])
    leaves = []
    shared = jax_runs_on(params[0].device)
    for leaf in chain.state:
      owner = params[0 if leaf.owner is None else leaf.owner]
      tensor = self.state[owner][leaf.name].view(leaf.shape)
      with _torch_chain.x64_scope(params[0].dtype):
        leaves.append(jax.dlpack.from_dlpack(tensor if shared else tensor.to('cpu', copy=True)))
    return jax.tree.unflatten(chain.update.in_tree.children()[2], leaves)

  def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
    """Restores a :meth:`state_dict`, so that training resumes bit-exactly.

    As ``torch.optim.Optimizer.load_state_dict`` (its hooks run), except
    that state tensors keep their dtype (int32 counters, float32 state of
    bfloat16 parameters) and move to their parameter's device. Everything is
    checked before anything changes.

    Raises:
      ValueError: if the dict's structure, names, shapes or dtypes do not fit
        this optimizer's parameters and transformation.
    """
    state_dict = dict(state_dict)
    for hook in self._optimizer_load_state_dict_pre_hooks.values():
      result = hook(self, state_dict)
      if result is not None:
        state_dict = result
    if not isinstance(state_dict, Mapping) or set(state_dict) != {'state', 'param_groups'}:
      raise ValueError("state_dict must be a dict with exactly the keys 'state' and 'param_groups'.")
    # Copied as torch.optim copies them: a tensor lr must not be shared with the saving optimizer.
    saved_groups = copy.deepcopy(state_dict['param_groups'])
    self._check_saved_groups(saved_groups)
    param_of: dict[Any, tuple[int, int]] = {}
    for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
      if len(saved['params']) != len(group['params']):
        raise ValueError(f'param_groups[{index}] has {len(saved["params"])} parameters in '
                         f'state_dict, {len(group["params"])} in this optimizer.')
      for position, saved_id in enumerate(saved['params']):
        param_of[saved_id] = (index, position)
    hyper = [self._hyperparameters(i, {**saved, 'params': []})
             for i, saved in enumerate(saved_groups)]
    new_state, shared_values = {}, {}
    for saved_id, tensors in state_dict['state'].items():
      if saved_id not in param_of:
        raise ValueError(f'state_dict has state for parameter {saved_id!r}, which no group lists.')
      index, position = param_of[saved_id]
      p = self.param_groups[index]['params'][position]
      traced, static = hyper[index]
      chain = self._chain(tuple(sorted(traced)), static, [_as_real(p)])
      _check_param_state(saved_id, tensors, {
          leaf.name: (_torch_chain.storage_shape(leaf, _as_real(p)), leaf.dtype)
          for leaf in chain.state})
      new_state[p] = {k: v.to(device=p.device, copy=True) for k, v in tensors.items()}
      shared_values[(index, position)] = repr(
          [tensors[leaf.name].tolist() for leaf in chain.state if leaf.owner is None])
    # Parameters whose shared state (step counts) agrees step together again.
    cohorts = []
    for index, group in enumerate(self.param_groups):
      labels: dict[str, int] = {}
      cohorts.append([labels.setdefault(shared_values.get((index, i), ''), len(labels))
                      for i in range(len(group['params']))])
    for saved, group in zip(saved_groups, self.param_groups):
      group.update({k: v for k, v in saved.items() if k != 'params'})
    self.state.clear()
    self.state.update(new_state)
    self._cohorts = cohorts
    self._checked = {}
    for hook in self._optimizer_load_state_dict_post_hooks.values():
      hook(self)

  def _check_saved_groups(self, saved_groups: Any) -> None:
    """Checks that a state dict's groups are this optimizer's: as many, with its keys.

    Another optimizer's groups (SGD's, Adam's) lack some of this one's
    hyperparameters; they are named here rather than failing later on the
    first missing key.

    Raises:
      ValueError: for a different number of groups, a group that is not a
        dict, or one that lacks ``'params'`` or a hyperparameter of this optimizer.
    """
    if not isinstance(saved_groups, Sequence) or len(saved_groups) != len(self.param_groups):
      count = len(saved_groups) if isinstance(saved_groups, Sequence) else 'no list of'
      raise ValueError(f'state_dict has {count} param groups, '
                       f'this optimizer has {len(self.param_groups)}.')
    # Keys the constructor gives every group; others (a scheduler's initial_lr) may differ.
    required = {'params', *self.defaults}
    for index, saved in enumerate(saved_groups):
      missing = sorted(required - set(saved)) if isinstance(saved, Mapping) else ['params']
      if missing:
        raise ValueError(
            f"state_dict's param_groups[{index}] lacks {missing}: is it the state dict of "
            f'another optimizer? {type(self).__name__} groups hold {sorted(required)}.')


@functools.lru_cache(maxsize=None)
def jax_runs_on(device: torch.device) -> bool:
  """Whether the installed jaxlib has a backend for tensors on ``device``.

  The package installs a CPU-only jaxlib; CUDA needs ``jax[cuda12]``. torch's
  ``cuda`` is JAX's ``gpu`` platform (CUDA or ROCm).
  """
  import jax  # pylint: disable=import-outside-toplevel
  if device.type == 'cpu':
    return True
  try:
    return bool(jax.devices({'cuda': 'gpu'}.get(device.type, device.type)))
  except RuntimeError:  # "Unknown backend"
    return False


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


def _as_real(tensor: torch.Tensor) -> torch.Tensor:
  """A complex tensor as its real view (``torch.view_as_real``); a real one as it is.

  Complex parameters are optimized as pairs of real numbers, as
  ``torch.optim`` does: the chain sees, and writes through, the real view,
  and the parameter's state has that view's shape (``p.shape + (2,)``).
  """
  return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _by_kind(positions: Sequence[int], params: Sequence[torch.Tensor]) -> dict[tuple, list[int]]:
  """Positions of ``params`` grouped by device, dtype and DTensor mesh (one lowered program each)."""
  kinds: dict[tuple, list[int]] = {}
  for i in positions:
    p = params[i]
    kinds.setdefault((p.device, p.dtype, _torch_dtensor.mesh_of(p)), []).append(i)
  return kinds


def _check_param_state(saved_id: Any, tensors: Any, expected: Mapping[str, tuple]) -> None:
  """Raises ValueError unless ``tensors`` has exactly the expected names, shapes, dtypes."""
  if not isinstance(tensors, Mapping) or set(tensors) != set(expected):
    names = sorted(tensors) if isinstance(tensors, Mapping) else type(tensors).__name__
    raise ValueError(f'state of parameter {saved_id!r} must have the entries '
                     f'{sorted(expected)}, got {names}.')
  for name, (shape, dtype) in expected.items():
    value = tensors[name]
    if not isinstance(value, torch.Tensor):
      raise ValueError(f'state[{saved_id!r}][{name!r}] must be a torch.Tensor, '
                       f'got {type(value).__name__}.')
    if tuple(value.shape) != tuple(shape) or value.dtype != dtype:
      raise ValueError(f'state[{saved_id!r}][{name!r}] must have shape {tuple(shape)} and '
                       f'dtype {dtype}, got {tuple(value.shape)} and {value.dtype}.')
