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
from typing import Any, Callable, Iterable, Mapping, Union

import optax
import torch

from expectigrad.bridges import _conventions, _torch_chain, _torch_executor, _torch_hyper, _torch_state
from expectigrad.bridges._torch_executor import EXECUTORS, jax_runs_on, runs_in_jax

__all__ = ['EXECUTORS', 'Optimizer', 'TORCH_TO_OPTAX_NAMES', 'jax_runs_on', 'runs_in_jax']

TORCH_TO_OPTAX_NAMES = _torch_hyper.TORCH_TO_OPTAX_NAMES
TransformFactory = Callable[..., optax.GradientTransformation]


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
    self._accepted = _torch_hyper.accepted_names(transform, defaults)
    self._executor = executor
    self._compile = bool(compile)
    # Per group, a cohort label per parameter position: parameters that have
    # always stepped together share their step counts (see ``_torch_state.cohorts_of``).
    self._cohorts: list[list[int]] = []
    self._reset_caches()
    super().__init__(params, defaults)
    self._lower_groups()

  def _reset_caches(self) -> None:
    """Lowered programs and hyperparameter tensors: rebuilt on demand, never pickled."""
    self._run = _torch_executor.Executor(self._make, self._executor, self._compile)
    self._hyper_tensors = _torch_hyper.HyperTensors()
    self._checked: dict[int, tuple] = {}

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
        _conventions.check_floating(f'a parameter of param_groups[{index}]', p.dtype,
                                    complex_as_real=True)
      self._hyperparameters(index)
    except Exception:
      self.param_groups.pop()
      raise
    self._cohorts.append([0] * len(self.param_groups[index]['params']))

  def _factory_arguments(self, group: Mapping[str, Any]) -> dict[str, Any]:
    """A group's factory keyword arguments (subclasses may rename keys here)."""
    named = {TORCH_TO_OPTAX_NAMES.get(k, k): v for k, v in group.items()
             if k not in _torch_hyper.BRIDGE_KEYS}
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
    named = {k: _torch_hyper.number(v) for k, v in self._factory_arguments(group).items()}
    for name, value in named.items():
      if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError(f'param_groups[{group_index}]: Tensor {_torch_hyper.torch_name(name)} '
                         f'must be 1-element, got shape {tuple(value.shape)}.')
    traced = {k: v for k, v in named.items() if _torch_hyper.is_traced(v)}
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
    if not _torch_hyper.is_hashable(static):
      raise TypeError('hyperparameters must be numbers, 0-d tensors or hashable constants, '
                      f'got {static}.')
    key = (tuple((k, v if not isinstance(v, torch.Tensor) else id(v))
                 for k, v in sorted(traced.items())), static)
    if self._checked.get(group_index) != key:
      # The factory validates concrete values; tensors stand in as 0.5.
      concrete = {k: (0.5 if isinstance(v, torch.Tensor) else float(v))
                  for k, v in traced.items()}
      self._transform(**concrete, **dict(static))
      self._checked[group_index] = key

  # -- lowering -----------------------------------------------------------------

  def _make(self, static: tuple) -> Callable[[dict], optax.GradientTransformation]:
    """The transformation as a function of the traced hyperparameters, for ``static`` ones."""
    if isinstance(self._transform, optax.GradientTransformation):
      return lambda hyper: self._transform
    return lambda hyper: self._transform(**hyper, **dict(static))

  def _lower_groups(self) -> None:
    """Lowers the chain for every group as a whole, ahead of a compiled first step."""
    for index, group in enumerate(self.param_groups):
      traced, static = self._hyperparameters(index)
      every = group['params']
      for positions in _torch_state.by_kind(range(len(every)), every).values():
        self._run.chain(tuple(sorted(traced)), static,
                        [_torch_state.as_real(every[i]) for i in positions])

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
        arrays = [_torch_state.as_real(p) for p in params]
        self._run.prepare(params, arrays, traced, static)
        if not self.state[params[0]]:
          self._run.init_state(self.state, params, arrays, self._hyper(params, traced), traced,
                               static)

  def _stepping_cohorts(self, group_index: int) -> list[list[torch.Tensor]]:
    """The group's parameters with a gradient, per device, dtype and cohort."""
    group = self.param_groups[group_index]['params']
    stepping = [i for i, p in enumerate(group) if p.grad is not None]
    labels = self._cohorts[group_index]
    return [[group[i] for i in cohort]
            for positions in _torch_state.by_kind(stepping, group).values()
            for cohort in _torch_state.cohorts_of(self.state, group, labels, positions)]

  def _hyper(self, params: list[torch.Tensor], traced: dict) -> list[torch.Tensor]:
    """A cohort's traced hyperparameters as 0-d tensors on its device, in sorted name order."""
    dtype = getattr(torch, _conventions.hyper_dtype([params[0].dtype]))
    return [self._hyper_tensors.get(k, traced[k], params[0].device, dtype)
            for k in sorted(traced)]

  def _step_cohort(self, params: list[torch.Tensor], traced: dict, static: tuple,
                   maximize: bool) -> None:
    arrays, hyper = [_torch_state.as_real(p) for p in params], self._hyper(params, traced)
    grads = [_torch_state.as_real(p.grad.to_dense() if p.grad.is_sparse else p.grad)
             for p in params]
    if maximize:
      grads = torch._foreach_neg(grads)
    self._run.step(self.state, params, arrays, hyper, grads, traced, static)

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
    chain = self._run.chain(tuple(sorted(traced)), static,
                            [_torch_state.as_real(p) for p in params])
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
    # Keys the constructor gives every group; others (a scheduler's initial_lr) may differ.
    _torch_state.check_saved_groups(saved_groups, len(self.param_groups),
                                    {'params', *self.defaults}, type(self).__name__)
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
      real = _torch_state.as_real(p)
      chain = self._run.chain(tuple(sorted(traced)), static, [real])
      _torch_state.check_param_state(saved_id, tensors, {
          leaf.name: (_torch_chain.storage_shape(leaf, real), leaf.dtype)
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
