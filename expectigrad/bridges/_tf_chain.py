"""An optax chain compiled into TensorFlow ops, shared by the TF1 and Keras bridges.

The chain's ``init`` and ``update`` are converted once with
``jax.experimental.jax2tf`` into ``XlaCallModule`` ops: they run in eager mode,
inside ``tf.function`` (with or without ``jit_compile=True``, where XLA inlines
the module into the cluster) and in TF1 graphs, and they are saved with the
graph. The math is never rewritten in TF: TF only reads variables, calls the
converted update and assigns its results.

The optax state is flattened to a list of :class:`StateLeaf`. The parameters
enter the chain as a dict keyed by variable name, so a state leaf whose path
passes through one of those keys mirrors that variable (a TF1 slot or a Keras
per-variable optimizer variable); any other leaf (a step count) is global.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorflow as tf
from jax.experimental import jax2tf

from expectigrad.bridges._tree_paths import key_name

# A fixed transform, or a factory called with ``learning_rate=<scalar>`` at every step.
TransformOrFactory = Union[optax.GradientTransformation, Callable[..., optax.GradientTransformation]]


class StateLeaf(NamedTuple):
  """One array of the flattened optax state.

  Attributes:
    name: readable path inside the state, e.g. ``'sum_of_squares'`` or
      ``'0_count'`` (chain positions kept only where needed to be unique).
    param_index: index of the parameter this leaf mirrors, or None for a
      global leaf such as a step count.
    shape: the leaf's shape.
    dtype: the leaf's TF dtype.
  """

  name: str
  param_index: int | None
  shape: tuple[int, ...]
  dtype: tf.DType


def _unique_names(names: Sequence[str]) -> list[str]:
  """The names, made unique by suffixing the index where two coincide."""
  seen = {name: names.count(name) for name in names}
  return [name if seen[name] == 1 else f'{name}_{i}' for i, name in enumerate(names)]


def dense_gradient(gradient: tf.Tensor | tf.IndexedSlices, variable) -> tf.Tensor:
  """The dense gradient of ``variable``: IndexedSlices are scattered into zeros.

  Duplicate indices are summed (their squares are not), and rows that are not
  indexed get a zero gradient, exactly as in the dense computation: their
  momentum decays and, with a sparse counter, they are not counted.
  """
  if not isinstance(gradient, tf.IndexedSlices):
    return tf.convert_to_tensor(gradient)
  rows = tf.shape(variable)[0]
  return tf.math.unsorted_segment_sum(gradient.values, gradient.indices, rows)


def as_factory(transform: TransformOrFactory) -> Callable[[Any], optax.GradientTransformation]:
  """``learning_rate -> transformation`` for a fixed transformation or a factory.

  Raises:
    TypeError: if ``transform`` is neither a transformation nor callable.
  """
  if isinstance(transform, optax.GradientTransformation):
    return lambda learning_rate: transform
  if callable(transform):
    return lambda learning_rate: transform(learning_rate=learning_rate)
  raise TypeError(
      'transform must be an optax.GradientTransformation or a factory taking '
      f'learning_rate=, got {type(transform).__name__}.'
  )


class ConvertedChain:
  """``init`` and ``update`` of an optax chain over a fixed list of variables, as TF ops.

  Args:
    transform: an ``optax.GradientTransformation``, applied as is (with its own
      learning rate), or a factory such as :func:`expectigrad.expectigrad`
      that is called with ``learning_rate=`` the framework's current learning
      rate inside the converted function at every step (so schedules and
      learning-rate edits need no recompilation).
    names: one name per variable: the keys of the params dict the chain sees.
    shapes: the variables' shapes.
    dtypes: the variables' TF dtypes. If any is 64-bit the chain is traced
      with ``jax.enable_x64(True)`` (the user's global JAX setting is untouched).
  """

  def __init__(
      self,
      transform: TransformOrFactory,
      names: Sequence[str],
      shapes: Sequence[Sequence[int]],
      dtypes: Sequence[tf.DType],
  ):
    """Converts the chain; raises TypeError like :func:`as_factory`."""
    self._make_transform = as_factory(transform)
    self._keys = _unique_names(list(names))
    self._x64 = any(tf.as_dtype(dtype).size == 8 for dtype in dtypes)
    # The learning rate enters the chain in the widest float type, so float64
    # parameters see a float64 learning rate.
    self.learning_rate_dtype = tf.float64 if self._x64 else tf.float32
    specs = {
        key: jax.ShapeDtypeStruct(tuple(shape), np.dtype(tf.as_dtype(dtype).as_numpy_dtype))
        for key, shape, dtype in zip(self._keys, shapes, dtypes)
    }
    with jax.enable_x64(self._x64):
      state = jax.eval_shape(self._make_transform(1.0).init, specs)
    paths_and_leaves, self._treedef = jax.tree_util.tree_flatten_with_path(state)
    index_of_key = {key: i for i, key in enumerate(self._keys)}
    labels, short_labels, param_indices = [], [], []
    for path, _ in paths_and_leaves:
      names_on_path = [key_name(key) for key in path]
      param_indices.append(
          next((index_of_key[n] for n in names_on_path if n in index_of_key), None)
      )
      own = [(n, key) for n, key in zip(names_on_path, path) if n not in index_of_key]
      labels.append('_'.join(n for n, _ in own) or 'state')
      # Without the positions in the chain where that is still unambiguous:
      # 'momentum' rather than '1_momentum', but '0_count' and '1_count'.
      short_labels.append('_'.join(n for n, key in own if not hasattr(key, 'idx')) or 'state')
    # A name needs to be unique among the leaves of one variable (or among the global ones).
    short_keys = list(zip(short_labels, param_indices))
    self.leaves: list[StateLeaf] = [
        StateLeaf(
            short if short_keys.count((short, param_index)) == 1 else label,
            param_index,
            tuple(leaf.shape),
            tf.as_dtype(leaf.dtype),
        )
        for (_, leaf), label, short, param_index in zip(
            paths_and_leaves, labels, short_labels, param_indices
        )
    ]
    self._init = tf.function(jax2tf.convert(self._jax_init, with_gradient=False), autograph=False)
    self._update = tf.function(
        jax2tf.convert(self._jax_update, with_gradient=False), autograph=False
    )

  def _jax_init(self, params: list[jax.Array]) -> list[jax.Array]:
    state = self._make_transform(1.0).init(dict(zip(self._keys, params)))
    return jax.tree.leaves(state)

  def _jax_update(self, params, gradients, state_leaves, learning_rate):
    # Gradients may come flattened (see assigning_step); the chain sees them in shape.
    gradients = {key: g.reshape(p.shape) for key, g, p in zip(self._keys, gradients, params)}
    params = dict(zip(self._keys, params))
    state = jax.tree.unflatten(self._treedef, state_leaves)
    updates, state = self._make_transform(learning_rate).update(gradients, state, params)
    new_params = optax.apply_updates(params, updates)
    return [new_params[key] for key in self._keys], jax.tree.leaves(state)

  def init(self, params: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """The initial state leaves for these parameter values (TF tensors)."""
    with jax.enable_x64(self._x64):
      return self._init(list(params))

  def learning_rate_tensor(self, learning_rate: Any) -> tf.Tensor:
    """A number, tensor or variable as a scalar tensor of the chain's float type."""
    # tf.cast would round a Python float through float32 first.
    if tf.is_tensor(learning_rate) or isinstance(learning_rate, tf.Variable):
      return tf.cast(learning_rate, self.learning_rate_dtype)
    return tf.constant(learning_rate, self.learning_rate_dtype)

  def update(
      self,
      params: Sequence[tf.Tensor],
      gradients: Sequence[tf.Tensor],
      state: Sequence[tf.Tensor],
      learning_rate: Any,
  ) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """One step: returns ``(new parameter values, new state leaves)``.

    Args:
      params: current parameter values, in the order of ``names``.
      gradients: dense gradients of the same dtypes, in the parameters' shapes or flattened.
      state: the current state leaves, in the order of :attr:`leaves`.
      learning_rate: scalar tensor or number (ignored by a fixed transform).
    """
    learning_rate = self.learning_rate_tensor(learning_rate)
    with jax.enable_x64(self._x64):
      return self._update(list(params), list(gradients), list(state), learning_rate)

  def assigning_step(self) -> Callable:
    """A ``tf.function(jit_compile=True)`` that reads, updates and assigns resource variables.

    One XLA cluster around the whole step lets XLA update the variables in
    place; run outside a cluster, the converted op's outputs are fresh buffers
    that the assignments then copy (measured ~4x slower in a TF1 Session).
    Inside a caller's ``jit_compile=True`` function it is inlined. The
    variables are arguments rather than captures, so under ``tf.distribute``
    the same step updates each device's copies of mirrored variables.

    The gradients enter the cluster flattened. Inside it, a reshape is a view
    that every loop reading it pays for with index arithmetic per element:
    the core keeps the state of kernels such as ``(C, C, 3, 3)`` flat, and
    its loops read a 4-D gradient about 2.5x slower than a flat one
    (measured). Outside the cluster, as in a TF1 graph, the reshape is free;
    inside a caller's cluster it costs what it did before.

    Returns:
      ``step(params, state, gradients, learning_rate, frozen=()) -> True``:
      ``params`` and ``state`` are the variables in the order of ``names`` and
      :attr:`leaves`; ``frozen`` holds indices of parameters that are left
      untouched, with the state leaves that mirror them (global leaves such
      as step counts still advance).
    """

    def step(params, state, gradients, learning_rate, frozen=()):
      new_params, new_state = self.update(
          [v.read_value() for v in params], gradients, [v.read_value() for v in state], learning_rate
      )
      for i, (variable, value) in enumerate(zip(params, new_params)):
        if i not in frozen:
          variable.assign(value)
      for leaf, variable, value in zip(self.leaves, state, new_state):
        if leaf.param_index not in frozen:
          variable.assign(value)
      return tf.constant(True)  # something a TF1 graph can depend on

    compiled = tf.function(step, jit_compile=True, autograph=False)

    def flat_gradients_step(params, state, gradients, learning_rate, frozen=()):
      return compiled(params, state, [tf.reshape(g, [-1]) for g in gradients], learning_rate, frozen)

    return flat_gradients_step
