"""Any optax ``GradientTransformation`` as a ``torch.optim.Optimizer``.

The update rule is never rewritten in torch: each step runs the jitted optax
update on the torch gradients, which cross into JAX zero-copy through dlpack,
and adds the resulting update to the parameters in place. See
:class:`Optimizer`.

On a GPU, JAX would by default reserve most of the device memory when it
first runs, starving torch. Importing this module therefore sets
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` when CUDA is available and the
variable is unset; it only takes effect if JAX has not used the GPU yet.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable, Iterable, Mapping, Union

import jax
import optax
import torch

from expectigrad.bridges import _torch_bucket
from expectigrad.bridges._torch_bucket import Bucket, StateLayout

if torch.cuda.is_available():
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

# torch's names for hyperparameters -> the factory's keyword names. Keys not
# listed are passed under their own name (beta, eps, sparse_counter, ...).
TORCH_TO_OPTAX_NAMES: Mapping[str, str] = {'lr': 'learning_rate'}

TransformFactory = Callable[..., optax.GradientTransformation]


def _accepted_names(transform: Any, defaults: Mapping[str, Any]) -> frozenset[str]:
  """The factory's keyword names a group may set; other group keys are ignored.

  Groups also carry keys that are not hyperparameters of the transform
  (``initial_lr`` from LR schedulers, user annotations).
  """
  names = {TORCH_TO_OPTAX_NAMES.get(k, k) for k in defaults}
  if isinstance(transform, optax.GradientTransformation):
    return frozenset()
  try:
    parameters = inspect.signature(transform).parameters.values()
  except (TypeError, ValueError):  # no signature (some builtins): the defaults only
    return frozenset(names)
  return frozenset(names | {p.name for p in parameters if p.kind in (
      inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)})


def _is_traced(value: Any) -> bool:
  """Numbers enter the jitted step as arguments (edits never recompile)."""
  return isinstance(value, (int, float, torch.Tensor)) and not isinstance(value, bool)


class Optimizer(torch.optim.Optimizer):
  """A ``torch.optim.Optimizer`` that runs an optax transformation.

  ``transform`` is either a ``GradientTransformation`` (its hyperparameters
  fixed) or a factory of keyword hyperparameters such as
  :func:`expectigrad.expectigrad`. With a factory, every param group's
  values are passed to it at every step (``lr`` as ``learning_rate``, other
  keys by name), numbers as traced arguments, so LR schedulers, per-group
  values and ``param_group`` edits take effect without recompiling;
  non-numbers (``sparse_counter``) are compile-time constants.

  Each param group's parameters are packed per dtype and device into one
  flat vector, and the optax state lives in JAX over that vector, so a step
  is one jitted call per group (per dtype) whatever the number of tensors.
  Tree-wide operations in the chain (``optax.clip_by_global_norm``)
  therefore see one param group at a time. Parameters whose ``grad`` is None
  are skipped and keep their state; float64 parameters are computed in
  float64 (JAX's x64 mode is switched on for that call only).

  Args:
    params: parameters or param-group dicts, as for any torch optimizer.
    transform: an ``optax.GradientTransformation`` or a factory returning one.
    **defaults: hyperparameters for the factory (torch names, e.g. ``lr``).

  Raises:
    TypeError: if ``transform`` is neither, or hyperparameters are given
      with a fixed transformation.
    ValueError: if the factory rejects a group's hyperparameters.
  """

  def __init__(
      self,
      params: Iterable[Any],
      transform: Union[optax.GradientTransformation, TransformFactory],
      **defaults: Any,
  ):
    if isinstance(transform, optax.GradientTransformation):
      if defaults:
        raise TypeError(
            f'hyperparameters {sorted(defaults)} need a factory of keyword hyperparameters '
            '(e.g. expectigrad.expectigrad), not a fixed GradientTransformation.')
    elif not callable(transform):
      raise TypeError('transform must be an optax.GradientTransformation or a factory '
                      f'returning one, got {type(transform).__name__}.')
    self._transform = transform
    self._accepted = _accepted_names(transform, defaults)
    self._buckets: dict[torch.Tensor, Bucket] = {}
    self._compiled: dict[tuple, tuple[Callable, Callable]] = {}
    self._facts: dict[tuple, Any] = {}  # per (static, dtype): needs_params, layout
    self._checked: dict[int, tuple] = {}
    super().__init__(params, defaults)

  def add_param_group(self, param_group: dict[str, Any]) -> None:
    """Adds a group after checking its hyperparameters (see ``torch.optim.Optimizer``)."""
    super().add_param_group(param_group)
    try:
      self._hyperparameters(len(self.param_groups) - 1)
    except Exception:
      self.param_groups.pop()
      raise

  def _hyperparameters(self, group_index: int, group: dict | None = None) -> tuple[dict, tuple]:
    """The ``(traced, static)`` factory arguments of a group, checked by the factory.

    Args:
      group_index: the group's position, for error messages and caching.
      group: the group's dict; ``self.param_groups[group_index]`` by default.

    Raises:
      ValueError: naming the group, if the factory rejects a value.
      TypeError: for parameters that are not floating point.
    """
    group = self.param_groups[group_index] if group is None else group
    for p in self.param_groups[group_index]['params']:
      if not p.is_floating_point():
        raise TypeError(f'param_groups[{group_index}] holds a {p.dtype} parameter; '
                        'only floating-point parameters can be optimized.')
    if isinstance(self._transform, optax.GradientTransformation):
      return {}, ()
    named = {TORCH_TO_OPTAX_NAMES.get(k, k): v for k, v in group.items() if k != 'params'}
    named = {k: v for k, v in named.items() if k in self._accepted}
    traced = {k: float(v) for k, v in named.items() if _is_traced(v)}
    static = tuple(sorted((k, v) for k, v in named.items() if not _is_traced(v)))
    key = (tuple(sorted(traced.items())), static)
    if self._checked.get(group_index) != key:
      try:  # The factory validates concrete values (the traced ones cannot be).
        self._transform(**traced, **dict(static))
      except ValueError as error:
        raise ValueError(f'param_groups[{group_index}]: {error}') from error
      self._checked[group_index] = key
    return traced, static

  def _functions(self, static: tuple) -> tuple[Callable, Callable]:
    """Jitted ``init(hyper, params)`` and ``update(hyper, grads, spare, state, params)``."""
    if static not in self._compiled:
      def make(hyper):
        if isinstance(self._transform, optax.GradientTransformation):
          return self._transform
        return self._transform(**hyper, **dict(static))

      def init(hyper, params):
        return make(hyper).init(params)

      # ``spare`` is last step's update buffer, donated so XLA reuses it for
      # this step's update (kept even though unused: keep_unused=True). JAX
      # pairs donated inputs with outputs of the same shape in argument order,
      # and the outputs are (updates, state): ``spare`` must come before
      # ``state``, or XLA aliases the update to a state buffer and inserts
      # copies (measured: 2 extra passes over the state).
      @functools.partial(jax.jit, donate_argnums=(2, 3), keep_unused=True)
      def update(hyper, grads, spare, state, params):
        del spare
        return make(hyper).update(grads, state, params)

      self._compiled[static] = (jax.jit(init), update)
    return self._compiled[static]

  def _needs_params(self, static: tuple, hyper: dict, bucket_dtype: torch.dtype) -> bool:
    """Whether the chain's update reads the parameters (weight decay, ...).

    Parameters are packed into a flat vector only if it does: the update is
    evaluated abstractly with ``params=None`` and fails if they are needed.
    """
    key = ('needs_params', static, bucket_dtype)
    if key not in self._facts:
      init, update = self._functions(static)
      jax_dtype = _torch_bucket.to_jax_dtype(bucket_dtype)
      vector = jax.ShapeDtypeStruct((2,), jax_dtype)
      with _torch_bucket.x64_scope(bucket_dtype):
        state = jax.eval_shape(init, hyper, vector)
        try:
          jax.eval_shape(update.__wrapped__, hyper, vector, vector, state, None)
          needs = False
        except Exception:  # pylint: disable=broad-except
          needs = True
      self._facts[key] = needs
    return self._facts[key]

  def _layout(self, static: tuple, hyper: dict, dtype: torch.dtype) -> StateLayout:
    key = ('layout', static, dtype)
    if key not in self._facts:
      init, _ = self._functions(static)
      self._facts[key] = _torch_bucket.state_layout(init.__wrapped__, hyper, dtype)
    return self._facts[key]

  def _new_buckets(self, params: list[torch.Tensor], hyper: dict, static: tuple) -> None:
    """Fresh state for parameters that never stepped, one bucket per dtype and device."""
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
      by_kind.setdefault((p.dtype, p.device), []).append(p)
    init, _ = self._functions(static)
    for (dtype, _), members in by_kind.items():
      layout = self._layout(static, hyper, dtype)
      bucket = Bucket(members, layout, None)
      with _torch_bucket.x64_scope(dtype):
        bucket.state = init(hyper, jax.dlpack.from_dlpack(bucket.flat_params().clone()))
      for p in members:
        self._buckets[p] = bucket

  def _active_buckets(self, group_index: int, hyper: dict, static: tuple) -> list[Bucket]:
    """The buckets whose parameters all have gradients this step, splitting mixed ones."""
    stepping = [p for p in self.param_groups[group_index]['params'] if p.grad is not None]
    self._new_buckets([p for p in stepping if p not in self._buckets], hyper, static)
    buckets = {id(self._buckets[p]): self._buckets[p] for p in stepping}
    active = []
    for bucket in buckets.values():
      has_grad = [p.grad is not None for p in bucket.params]
      if not all(has_grad):
        bucket, idle = bucket.split(has_grad)
        for p in idle.params:
          self._buckets[p] = idle
        for p in bucket.params:
          self._buckets[p] = bucket
      active.append(bucket)
    return active

  @torch.no_grad()
  def step(self, closure: Callable[[], Any] | None = None) -> Any:
    """Performs one optimization step.

    Args:
      closure: re-evaluates the model and returns the loss (optional).

    Returns:
      The closure's loss, or None.

    Raises:
      ValueError: if a group's hyperparameters are invalid (nothing changes).
    """
    loss = None
    if closure is not None:
      with torch.enable_grad():
        loss = closure()
    # Check every group before touching any parameter or state.
    plans = []
    for index in range(len(self.param_groups)):
      traced, static = self._hyperparameters(index)
      plans.append((index, traced, static))
    for index, traced, static in plans:
      for bucket in self._active_buckets(index, traced, static):
        _, update = self._functions(static)
        needs_params = self._needs_params(static, traced, bucket.dtype)
        with _torch_bucket.x64_scope(bucket.dtype):
          bucket.step(update, traced, needs_params)
    return loss

  def state_dict(self) -> dict[str, Any]:
    """The state in torch's layout, as plain tensors (copies of the JAX state).

    Returns:
      ``{'state': {index: {name: tensor}}, 'param_groups': [...]}`` where
      ``index`` numbers the parameters across groups in order and ``name`` is
      the leaf's path in the optax state (``'0.sum_of_squares'``). Loadable
      with ``torch.load(weights_only=True)``.
    """
    index_of = {}
    param_groups = []
    for group in self.param_groups:
      packed = {k: v for k, v in group.items() if k != 'params'}
      packed['params'] = [index_of.setdefault(p, len(index_of)) for p in group['params']]
      param_groups.append(packed)
    state = {}
    for bucket in {id(b): b for b in self._buckets.values()}.values():
      for p, tensors in zip(bucket.params, bucket.export()):
        state[index_of[p]] = tensors
    return {'state': dict(sorted(state.items())), 'param_groups': param_groups}

  def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
    """Restores a :meth:`state_dict`, so that training resumes bit-exactly.

    Everything is checked before anything changes.

    Raises:
      ValueError: if the dict's structure, names, shapes or dtypes do not fit
        this optimizer's parameters and transformation.
    """
    if not isinstance(state_dict, Mapping) or set(state_dict) != {'state', 'param_groups'}:
      raise ValueError("state_dict must be a dict with exactly the keys 'state' and 'param_groups'.")
    saved_groups = state_dict['param_groups']
    if len(saved_groups) != len(self.param_groups):
      raise ValueError(f'state_dict has {len(saved_groups)} param groups, '
                       f'this optimizer has {len(self.param_groups)}.')
    param_of, group_of = {}, {}
    for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
      if len(saved['params']) != len(group['params']):
        raise ValueError(f'param_groups[{index}] has {len(saved["params"])} parameters in '
                         f'state_dict, {len(group["params"])} in this optimizer.')
      for saved_id, p in zip(saved['params'], group['params']):
        param_of[saved_id], group_of[saved_id] = p, index
    plans = [self._hyperparameters(i, saved) for i, saved in enumerate(saved_groups)]

    members: dict[tuple, list] = {}
    for saved_id, tensors in state_dict['state'].items():
      if saved_id not in param_of:
        raise ValueError(f'state_dict has state for parameter {saved_id!r}, which no group lists.')
      p, index = param_of[saved_id], group_of[saved_id]
      traced, static = plans[index]
      layout = self._layout(static, traced, p.dtype)
      _check_param_state(saved_id, tensors, _torch_bucket.expected_state_shapes(p, layout))
      shared = tuple(
          tensors[name].tolist()
          for name, per_element in zip(layout.names, layout.elementwise) if not per_element)
      members.setdefault((index, p.dtype, p.device, repr(shared)), []).append((p, tensors, layout))

    for saved, group in zip(saved_groups, self.param_groups):
      group.update({k: v for k, v in saved.items() if k != 'params'})
    self._buckets, self._checked = {}, {}
    for entries in members.values():
      params = [p for p, _, _ in entries]
      states = [{k: v.to(p.device) for k, v in t.items()} for p, t, _ in entries]
      bucket = Bucket.restore(params, states, entries[0][2])
      for p in params:
        self._buckets[p] = bucket


def _check_param_state(saved_id: Any, tensors: Any, expected: dict) -> None:
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
    want_dtype = _torch_bucket.to_torch_dtype(dtype)
    if tuple(value.shape) != shape or value.dtype != want_dtype:
      raise ValueError(f'state[{saved_id!r}][{name!r}] must have shape {shape} and dtype '
                       f'{want_dtype}, got {tuple(value.shape)} and {value.dtype}.')
