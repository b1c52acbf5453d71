"""The conventions every generic bridge follows (torch, TF1, Keras on each backend).

A bridge runs an optax chain it knows nothing about over a framework's
parameters. What it needs to agree on with the others lives here, once:

- **Transform or factory** (:func:`check_transform`, :func:`make_transform`):
  ``transform`` is a fixed ``optax.GradientTransformation``, used as is (an
  ``optax.MultiSteps`` as its ``gradient_transformation()``), or a
  factory of keyword hyperparameters (such as :func:`expectigrad.expectigrad`)
  that the bridge calls inside the traced step with the framework's current
  values as traced scalars: at least ``learning_rate=``, so schedules and
  learning-rate edits need no re-tracing.
- **State description** (:func:`describe_state`, :func:`leaf_names`): the
  chain sees the parameters as a dict keyed by one string per parameter, so
  a state leaf whose path passes through a key is *owned* by that parameter
  (a sum, a counter, a momentum) and any other leaf is *shared* (a step
  count). A leaf is named by its path without the parameter key.
- **float64** (:func:`needs_x64`, :func:`hyper_dtype`, :func:`x64_scope`):
  the chain is traced in JAX's 64-bit mode exactly when a parameter is
  float64 (the user's global JAX setting is untouched), and the traced
  hyperparameters are then float64, else float32.
- **Parameters** (:func:`check_floating`, :func:`check_gradient_shape`): only
  real floating-point parameters are optimized, and a gradient must have its
  parameter's shape; both are checked before anything changes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence, Union

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


# -- dtypes ------------------------------------------------------------------------------


class ListChain:
  """A transform or factory as the two JAX functions every TF and Keras bridge traces.

  The chain sees the parameters as a dict keyed by ``keys``; the bridges
  pass lists in that order and keep the state as its list of leaves.

  Args:
    transform: a transformation or factory (see :func:`make_transform`).
    keys: one key per parameter (see :func:`unique_keys`).
    specs: the parameters' ``jax.ShapeDtypeStruct``s, traced in the caller's
      x64 scope, which fix the state's structure (:attr:`state_shape`).
  """

  def __init__(self, transform: TransformOrFactory, keys: Sequence[str], specs: Sequence[Any]):
    self.transform, self.keys = transform, list(keys)
    self.state_shape = jax.eval_shape(self.make(1.0).init, dict(zip(self.keys, specs)))
    self._treedef = jax.tree.structure(self.state_shape)

  def make(self, learning_rate: Any) -> optax.GradientTransformation:
    return make_transform(self.transform, {'learning_rate': learning_rate})

  def init(self, params: Sequence[Any]) -> list[Any]:
    """``params -> state leaves``; the chain's init takes no learning rate, so 1.0 stands in."""
    return jax.tree.leaves(self.make(1.0).init(dict(zip(self.keys, params))))

  def update(self, params: Sequence[Any], gradients: Sequence[Any], state: Sequence[Any],
             learning_rate: Any) -> tuple[list[Any], list[Any]]:
    """``-> (new parameter values, new state leaves)``.

    Gradients may come flattened (the TF bridges hand them to XLA that way);
    the chain sees them in their parameters' shapes.
    """
    gradients = {k: g.reshape(p.shape) for k, g, p in zip(self.keys, gradients, params)}
    params = dict(zip(self.keys, params))
    updates, new_state = self.make(learning_rate).update(
        gradients, jax.tree.unflatten(self._treedef, state), params)
    new_params = optax.apply_updates(params, updates)
    return [new_params[k] for k in self.keys], jax.tree.leaves(new_state)


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


def check_floating(label: str, dtype: Any) -> None:
  """Raises TypeError unless ``dtype`` is a real floating-point type.

  Args:
    label: names the parameter in the message (e.g. ``"variable 'dense/kernel'"``).
    dtype: its dtype, in any framework.
  """
  name = dtype_name(dtype)
  if name not in ('float16', 'bfloat16', 'float32', 'float64'):
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
  """One array of a chain's state, as a bridge stores it.

  Attributes:
    path: the names on its path in the state tree, parameter key removed
      (``('0', 'sum_of_squares')``).
    positional: for each name of ``path``, whether it is a position in a
      sequence (a chain's ``'0'``) rather than a field or dict key.
    owner: the index of the parameter that owns it, or None if shared.
    shape: its shape, as ``jax.eval_shape`` of the chain's ``init`` reports.
    dtype: its numpy dtype.
  """

  path: tuple[str, ...]
  positional: tuple[bool, ...]
  owner: int | None
  shape: tuple[int, ...]
  dtype: np.dtype


def describe_state(state_shape: Any, param_keys: Sequence[str]) -> list[StateLeaf]:
  """One :class:`StateLeaf` per leaf of a state traced over parameters keyed ``param_keys``.

  A leaf is owned by the parameter whose key is on its path (the innermost
  one, if several are); without one, it is shared.
  """
  index_of = {key: i for i, key in enumerate(param_keys)}
  leaves = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state_shape)[0]:
    names = [key_name(k) for k in path]
    owners = [index_of[n] for n in names if n in index_of]
    own = [(n, hasattr(k, 'idx')) for n, k in zip(names, path) if n not in index_of]
    leaves.append(StateLeaf(tuple(n for n, _ in own), tuple(p for _, p in own),
                            owners[-1] if owners else None, tuple(leaf.shape),
                            np.dtype(leaf.dtype)))
  return leaves


def leaf_names(leaves: Sequence[StateLeaf], separator: str = '.', short: bool = False
               ) -> list[str]:
  """The name of each leaf: its path joined by ``separator`` (``'state'`` if empty).

  Args:
    leaves: from :func:`describe_state`.
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


class NamedLeaf(NamedTuple):
  """A state leaf with its name: what a bridge stores it under.

  Attributes:
    name: from :func:`leaf_names`.
    owner: the index of the parameter that owns it, or None if shared.
    shape: its shape.
    dtype: its dtype's numpy name (``'float32'``, ``'int32'``).
  """

  name: str
  owner: int | None
  shape: tuple[int, ...]
  dtype: str


def named_leaves(state_shape: Any, param_keys: Sequence[str], separator: str = '_',
                 short: bool = True) -> list[NamedLeaf]:
  """:func:`describe_state` and :func:`leaf_names` in one (Keras/TF naming by default)."""
  leaves = describe_state(state_shape, param_keys)
  return [NamedLeaf(name, leaf.owner, leaf.shape, leaf.dtype.name)
          for name, leaf in zip(leaf_names(leaves, separator, short), leaves)]


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
