"""The one chain core every bridge runs (torch, TF1, Keras on each backend).

A bridge runs an optax chain it knows nothing about over a framework's
parameters. Everything about the chain itself lives here, once, so that a
bridge is only the framework's side (its variables or tensors, its state
dict, its hooks; see docs/architecture.md):

- **Transform or factory** (:func:`check_transform`, :func:`make_transform`):
  ``transform`` is a fixed ``optax.GradientTransformation``, used as is (an
  ``optax.MultiSteps`` as its ``gradient_transformation()``), or a
  factory of keyword hyperparameters (such as :func:`expectigrad.expectigrad`)
  that the bridge calls inside the traced step with the framework's current
  values as traced scalars: at least ``learning_rate=``, so schedules and
  learning-rate edits need no re-tracing.
- **The chain** (:class:`Chain`): a transform or factory over one list of
  parameter specs, with named traced hyperparameters, as the JAX functions a
  bridge traces, converts or lowers: ``init``/``update`` over pytrees (for
  the torch lowering) or over lists of leaves (for the TF and Keras bridges).
- **The state** (:class:`StateLeaf`, :func:`state_leaves`): the chain sees
  the parameters as a dict keyed by one string per parameter, so a state
  leaf whose path passes through a key is *owned* by that parameter (a sum,
  a counter, a momentum) and any other leaf is *shared* (a step count). A
  leaf is named by its path without the parameter key.
- **float64** (:func:`needs_x64`, :func:`hyper_dtype`, :func:`x64_scope`):
  the chain is traced in JAX's 64-bit mode exactly when a parameter is
  float64 (the user's global JAX setting is untouched), and the traced
  hyperparameters are then float64, else float32.
- **Parameters** (:func:`check_floating`, :func:`check_gradient_shape`): only
  real floating-point parameters are optimized, and a gradient must have its
  parameter's shape; both are checked before anything changes. Complex
  parameters: ``torch.optim`` optimizes them as pairs of reals, so the torch
  bridge hands the chain their ``torch.view_as_real`` views
  (``complex_as_real=True``); TF and Keras optimizers refuse them, and so do
  their bridges.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Container, Iterable, Mapping, NamedTuple, Sequence, Union

import jax
import numpy as np
import optax

# A fixed transform, or a factory called with keyword hyperparameters
# (``learning_rate=`` at least) at every step.
TransformOrFactory = Union[optax.GradientTransformation, Callable[..., optax.GradientTransformation]]


def check_transform(transform: Any, hyperparameters: Iterable[str] = ()) -> TransformOrFactory:
  """Checks the transform-or-factory contract at construction.

  Args:
    transform: what the user passed.
    hyperparameters: names of hyperparameters the user set for the factory
      (other than the learning rate, which a fixed transform ignores).

  Returns:
    The transform or factory to use: ``transform`` itself, except that an
    ``optax.MultiSteps`` (a wrapper, not a transformation) becomes its
    ``gradient_transformation()``.

  Raises:
    TypeError: if ``transform`` is neither a transformation nor callable, or
      hyperparameters are given with a fixed transformation.
  """
  if isinstance(transform, optax.MultiSteps):
    transform = transform.gradient_transformation()
  if isinstance(transform, optax.GradientTransformation):
    names = sorted(hyperparameters)
    if names:
      raise TypeError(
          f'hyperparameters {names} need a factory of keyword hyperparameters '
          '(e.g. expectigrad.expectigrad), not a fixed GradientTransformation.')
  elif not callable(transform):
    raise TypeError('transform must be an optax.GradientTransformation or a factory '
                    f'returning one, got {type(transform).__name__}.')
  return transform


def make_transform(transform: TransformOrFactory, hyperparameters: Mapping[str, Any]
                   ) -> optax.GradientTransformation:
  """The transformation for these (traced) hyperparameters: a fixed one ignores them."""
  if isinstance(transform, optax.GradientTransformation):
    return transform
  return transform(**hyperparameters)


# -- the chain ---------------------------------------------------------------------------


class Chain:
  """A transform or factory over one list of parameters: what every bridge traces.

  The chain sees the parameters (and gradients and updates) as a dict keyed
  by :attr:`keys`; the bridges pass lists in that order. Two forms of the
  same functions serve the two kinds of bridge:

  - over pytrees, with the traced hyperparameters as a dict
    (:meth:`init_tree`, :meth:`update_tree`): what the torch bridge lowers
    with :mod:`expectigrad.jax2torch`, and reads the state's tree from;
  - over lists of state leaves, returning new parameter values
    (:meth:`init`, :meth:`update`): what the TF bridges convert with
    ``jax2tf`` and Keras's JAX backend jits.

  Args:
    transform: a transformation or factory (see :func:`check_transform`).
    names: one name per parameter; made unique (:func:`unique_keys`) as the keys.
    specs: the parameters' ``jax.ShapeDtypeStruct``s.
    hyper_names: the factory's keywords the bridge passes as traced scalars
      at every step, in the order :meth:`update` takes their values.

  Attributes:
    keys: the dict keys the chain sees the parameters under.
    hyper_names: as given, as a tuple.
    dtypes: the parameters' dtype names.
    hyper_dtype: the traced hyperparameters' dtype name (:func:`hyper_dtype`).
    state_shape: the state's tree of ``jax.ShapeDtypeStruct``, traced from
      the specs with traced hyperparameters.
  """

  def __init__(self, transform: TransformOrFactory, names: Sequence[str], specs: Sequence[Any],
               hyper_names: Sequence[str] = ('learning_rate',)):
    self.transform = transform
    self.keys = unique_keys(list(names))
    self.hyper_names = tuple(hyper_names)
    self.dtypes = [dtype_name(s.dtype) for s in specs]
    self.hyper_dtype = hyper_dtype(self.dtypes)
    with self.x64():
      hyper = {k: jax.ShapeDtypeStruct((), np.dtype(self.hyper_dtype)) for k in self.hyper_names}
      self.state_shape = jax.eval_shape(self.init_tree, hyper, list(specs))
    self._treedef = jax.tree.structure(self.state_shape)

  def x64(self):
    """JAX's 64-bit mode where a parameter is float64 (see :func:`x64_scope`): trace and run in it."""
    return x64_scope(self.dtypes)

  def transformation(self, hyper: Mapping[str, Any]) -> optax.GradientTransformation:
    """The transformation for these (traced) hyperparameters: a fixed one ignores them."""
    return make_transform(self.transform, hyper)

  def tree(self, values: Sequence[Any] | None) -> dict[str, Any] | None:
    """Per-parameter values in :attr:`keys` order as the dict the chain sees (None stays None)."""
    return None if values is None else dict(zip(self.keys, values))

  def init_tree(self, hyper: Mapping[str, Any], params: Sequence[Any]) -> Any:
    """``(hyperparameters, params) -> state`` as the optax state tree."""
    return self.transformation(hyper).init(self.tree(params))

  def update_tree(self, hyper: Mapping[str, Any], gradients: Sequence[Any], state: Any,
                  params: Sequence[Any] | None) -> tuple[list[Any], Any]:
    """``-> (updates in parameter order, new state tree)``; ``params`` may be None."""
    updates, new_state = self.transformation(hyper).update(
        self.tree(gradients), state, self.tree(params))
    return [updates[k] for k in self.keys], new_state

  def init(self, params: Sequence[Any]) -> list[Any]:
    """``params -> state leaves``.

    An optax ``init`` reads no hyperparameter values, but a factory needs
    some to build the transformation: 1.0 stands in for each.
    """
    return jax.tree.leaves(self.init_tree(dict.fromkeys(self.hyper_names, 1.0), params))

  def update(self, params: Sequence[Any], gradients: Sequence[Any], state: Sequence[Any],
             *hyper: Any) -> tuple[list[Any], list[Any]]:
    """``-> (new parameter values, new state leaves)``; ``hyper`` in :attr:`hyper_names` order.

    Gradients may come flattened (the TF bridges hand them to XLA that way);
    the chain sees them in their parameters' shapes.
    """
    gradients = [g.reshape(p.shape) for g, p in zip(gradients, params)]
    updates, new_state = self.update_tree(dict(zip(self.hyper_names, hyper)), gradients,
                                          jax.tree.unflatten(self._treedef, state), params)
    return optax.apply_updates(list(params), updates), jax.tree.leaves(new_state)

  def state_leaves(self, separator: str = '_', short: bool = True,
                   dtype: Callable[[np.dtype], Any] = lambda d: d.name) -> list[StateLeaf]:
    """:func:`state_leaves` of this chain's state (Keras/TF naming by default)."""
    return state_leaves(self.state_shape, self.keys, separator, short, dtype)


def assign_unfrozen(assign: Callable[[Any, Any], Any], leaves: Sequence[StateLeaf],
                    params: Sequence[Any], new_params: Sequence[Any],
                    state: Sequence[Any], new_state: Sequence[Any],
                    frozen: Container[int] = ()) -> None:
  """Writes a step's results with ``assign(target, value)``, but not a frozen parameter's.

  A parameter in ``frozen`` (one without a gradient) keeps its value and the
  state it owns; shared state (step counts) advances.

  Args:
    assign: writes one value (a bridge's assignment, or Keras's ``assign``).
    leaves: the chain's state leaves, in ``state`` order.
    params, new_params: the parameters and their new values.
    state, new_state: the state arrays and their new values.
    frozen: indices of parameters left untouched.
  """
  for i, (variable, value) in enumerate(zip(params, new_params)):
    if i not in frozen:
      assign(variable, value)
  for leaf, variable, value in zip(leaves, state, new_state):
    if leaf.owner not in frozen:
      assign(variable, value)


# -- dtypes ------------------------------------------------------------------------------


def dtype_name(dtype: Any) -> str:
  """A numpy-style dtype name for a numpy, JAX, TF, torch or Keras dtype (or name)."""
  if isinstance(dtype, str):
    return dtype
  name = getattr(dtype, 'name', None)
  if isinstance(name, str):  # numpy and TF dtypes
    return name
  return str(dtype).removeprefix('torch.')


def needs_x64(dtypes: Iterable[Any]) -> bool:
  """Whether a chain over parameters of these dtypes is traced in 64-bit mode."""
  return any(dtype_name(d) in ('float64', 'complex128') for d in dtypes)


def hyper_dtype(dtypes: Iterable[Any]) -> str:
  """The dtype of traced hyperparameters: float64 with a float64 parameter, else float32."""
  return 'float64' if needs_x64(dtypes) else 'float32'


def x64_scope(dtypes: Iterable[Any]):
  """JAX's 64-bit mode while tracing or running a chain over these parameters, if needed."""
  return jax.enable_x64(True) if needs_x64(dtypes) else contextlib.nullcontext()


def check_floating(label: str, dtype: Any, complex_as_real: bool = False) -> None:
  """Raises TypeError unless ``dtype`` is a type the bridge optimizes.

  Args:
    label: names the parameter in the message (e.g. ``"variable 'dense/kernel'"``).
    dtype: its dtype, in any framework.
    complex_as_real: accept complex dtypes too, for a bridge that hands the
      chain their real views (the torch bridge, as ``torch.optim`` does).
  """
  name = dtype_name(dtype)
  if name in ('float16', 'bfloat16', 'float32', 'float64'):
    return
  if complex_as_real and name in ('complex64', 'complex128'):
    return
  if complex_as_real:
    raise TypeError(f'{label} has dtype {name}: only floating-point and complex parameters '
                    'can be optimized.')
  kind = 'complex' if name.startswith('complex') else name
  raise TypeError(f'{label} has dtype {name}: only real floating-point variables can be '
                  f'optimized ({kind} variables cannot).')


def check_gradient_shape(label: str, gradient_shape: Sequence[int], shape: Sequence[int]) -> None:
  """Raises ValueError unless a gradient has its parameter's shape (no broadcasting)."""
  if tuple(gradient_shape) != tuple(shape):
    raise ValueError(f'the gradient of {label} has shape {tuple(gradient_shape)}, '
                     f'the variable has shape {tuple(shape)}; they must be equal.')


# -- the state ---------------------------------------------------------------------------


def key_name(key: Any) -> str:
  """The name, dict key or index of one pytree path key (``GetAttrKey``, ``DictKey``, ...)."""
  for attribute in ('name', 'key', 'idx'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def unique_keys(names: Sequence[str]) -> list[str]:
  """Parameter names made unique (as dict keys) by suffixing the index where two coincide."""
  counts = {name: list(names).count(name) for name in names}
  return [name if counts[name] == 1 else f'{name}_{i}' for i, name in enumerate(names)]


class StateLeaf(NamedTuple):
  """One array of a chain's state, as every bridge stores it.

  Attributes:
    name: its path in the state tree without the parameter key, joined by
      the bridge's separator (see :func:`state_leaves`).
    owner: the index of the parameter that owns it, or None if shared.
    shape: its shape, as ``jax.eval_shape`` of the chain's ``init`` reports.
    dtype: its dtype, as the bridge keeps it (a numpy name by default; a
      ``tf.DType``, a ``torch.dtype``).
  """

  name: str
  owner: int | None
  shape: tuple[int, ...]
  dtype: Any


class _LeafPath(NamedTuple):
  """A leaf's path before it is named: the names on it and which are chain positions."""

  path: tuple[str, ...]
  positional: tuple[bool, ...]
  owner: int | None
  shape: tuple[int, ...]
  dtype: np.dtype


def _describe_state(state_shape: Any, param_keys: Sequence[str]) -> list[_LeafPath]:
  """The path, owner, shape and dtype of each leaf of a state traced over ``param_keys``.

  A leaf is owned by the parameter whose key is on its path (the innermost
  one, if several are); without one, it is shared. Bridges use
  :func:`state_leaves`, which names them.
  """
  index_of = {key: i for i, key in enumerate(param_keys)}
  leaves = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state_shape)[0]:
    names = [key_name(k) for k in path]
    owners = [index_of[n] for n in names if n in index_of]
    own = [(n, hasattr(k, 'idx')) for n, k in zip(names, path) if n not in index_of]
    leaves.append(_LeafPath(tuple(n for n, _ in own), tuple(p for _, p in own),
                            owners[-1] if owners else None, tuple(leaf.shape),
                            np.dtype(leaf.dtype)))
  return leaves


def _leaf_names(leaves: Sequence[_LeafPath], separator: str = '.', short: bool = False
               ) -> list[str]:
  """The name of each leaf: its path joined by ``separator`` (``'state'`` if empty).

  Args:
    leaves: from :func:`_describe_state`.
    separator: ``'.'`` for torch's state dict keys, ``'_'`` for TF slot and
      Keras variable names.
    short: leave out chain positions where the name stays unique among the
      leaves of the same owner (``'sum_of_squares'``, ``'momentum'``, but
      ``'0_count'`` and ``'1_count'`` for two step counts), as TF1 slot names
      and Keras variable names have it.
  """
  full = [separator.join(leaf.path) or 'state' for leaf in leaves]
  if not short:
    return full
  brief = [separator.join(n for n, p in zip(leaf.path, leaf.positional) if not p) or 'state'
           for leaf in leaves]
  keys = [(name, leaf.owner) for name, leaf in zip(brief, leaves)]
  return [b if keys.count(key) == 1 else f for b, f, key in zip(brief, full, keys)]


def state_leaves(state_shape: Any, param_keys: Sequence[str], separator: str = '_',
                 short: bool = True, dtype: Callable[[np.dtype], Any] = lambda d: d.name
                 ) -> list[StateLeaf]:
  """One named :class:`StateLeaf` per leaf of a state traced over ``param_keys``.

  Args:
    state_shape: the state's tree of ``jax.ShapeDtypeStruct``.
    param_keys: the keys the chain saw the parameters under.
    separator, short: how names are made (see :func:`_leaf_names`): torch's
      state dict has ``('.', False)``, TF slots and Keras variables ``('_', True)``.
    dtype: the leaf's numpy dtype -> the dtype the bridge keeps.
  """
  leaves = _describe_state(state_shape, param_keys)
  return [StateLeaf(name, leaf.owner, leaf.shape, dtype(leaf.dtype))
          for name, leaf in zip(_leaf_names(leaves, separator, short), leaves)]


def raveled_layout(factory: Callable[..., optax.GradientTransformation]
                   ) -> Callable[..., optax.GradientTransformation]:
  """An elementwise chain's factory with :func:`expectigrad.layout.ravel_short_minor_dims` around it.

  XLA:CPU runs an elementwise update over ``(C, C, 3, 3)`` kernels' state
  scalar, about 3x slower than over the same buffers raveled (see
  :mod:`expectigrad.layout`). A published optimizer whose chain is
  elementwise may keep such state 1-D with this; it does so on every machine
  and backend, so that its checkpoints and ``.keras`` files move between CPU
  and GPU machines and Keras backends unchanged.
  """
  from expectigrad import layout  # pylint: disable=import-outside-toplevel

  def make(**hyperparameters):
    return layout.ravel_short_minor_dims(factory(**hyperparameters))
  return make
