"""An optax chain compiled into TensorFlow ops, shared by the TF1 and Keras bridges.

The chain's ``init`` and ``update`` are converted once with
``jax.experimental.jax2tf`` into ``XlaCallModule`` ops: they run in eager mode,
inside ``tf.function`` (with or without ``jit_compile=True``, where XLA inlines
the module into the cluster) and in TF1 graphs, and they are saved with the
graph. The math is never rewritten in TF: TF only reads variables, calls the
converted update and assigns its results.

The optax state is flattened to a list of the bridges' one
:class:`~._conventions.StateLeaf` (its dtype a ``tf.DType``). The parameters
enter the chain as a dict keyed by variable name, so a state leaf whose path
passes through one of those keys mirrors that variable (a TF1 slot or a Keras
per-variable optimizer variable); any other leaf (a step count) is global.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
import tensorflow as tf
from jax.experimental import jax2tf

from expectigrad.bridges import _conventions

TransformOrFactory = _conventions.TransformOrFactory
StateLeaf = _conventions.StateLeaf

# The platforms the converted modules are lowered for: every platform jaxlib
# lowers for without its plugin, so a graph, model or ``.keras`` file made on
# a CPU machine runs its optimizer on a GPU (TF picks the module's lowering for
# the device it places the op on).
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


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


def gradient_shape(gradient: Any) -> tuple | None:
  """The static shape of a dense gradient or of IndexedSlices (None where unknown)."""
  if isinstance(gradient, tf.IndexedSlices):
    if gradient.dense_shape is None:
      return None
    shape = tf.get_static_value(gradient.dense_shape)
    return None if shape is None else tuple(int(d) for d in shape)
  shape = tf.TensorShape(getattr(gradient, 'shape', None))
  return tuple(shape.as_list()) if shape.is_fully_defined() else None


class ConvertedChain:
  """``init`` and ``update`` of an optax chain over a fixed list of variables, as TF ops.

  Args:
    transform: an ``optax.GradientTransformation``, applied as is (with its own
      learning rate), or a factory such as :func:`expectigrad.expectigrad`
      that is called with ``learning_rate=`` the framework's current learning
      rate inside the converted function at every step (so schedules and
      learning-rate edits need no recompilation); see :mod:`._conventions`.
    names: one name per variable: the keys of the params dict the chain sees.
    shapes: the variables' shapes.
    dtypes: the variables' TF dtypes. If any is float64 the chain is traced
      with ``jax.enable_x64(True)`` (the user's global JAX setting is untouched).

  Attributes:
    chain: the chain core (:class:`~._conventions.Chain`) that is converted.
    leaves: one :class:`StateLeaf` per state array, in the chain's order
      (names as TF1 slots and Keras variables have them, dtypes as ``tf.DType``).
    platforms: the platforms the converted modules are lowered for.
    learning_rate_dtype: the TF dtype the learning rate enters the chain in.
  """

  def __init__(
      self,
      transform: TransformOrFactory,
      names: Sequence[str],
      shapes: Sequence[Sequence[int]],
      dtypes: Sequence[tf.DType],
      platforms: Sequence[str] = PLATFORMS,
  ):
    """Converts the chain; raises TypeError like :func:`_conventions.check_transform`."""
    transform = _conventions.check_transform(transform)
    self.platforms = tuple(platforms)
    specs = [jax.ShapeDtypeStruct(tuple(shape), np.dtype(tf.as_dtype(dtype).as_numpy_dtype))
             for shape, dtype in zip(shapes, dtypes)]
    self.chain = _conventions.Chain(transform, names, specs)
    self.learning_rate_dtype = tf.as_dtype(self.chain.hyper_dtype)
    self.leaves: list[StateLeaf] = self.chain.state_leaves(dtype=tf.as_dtype)
    convert = lambda f: tf.function(
        jax2tf.convert(f, with_gradient=False, native_serialization_platforms=self.platforms),
        autograph=False)
    self._init = convert(self.chain.init)
    self._update = convert(self.chain.update)

  def init(self, params: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """The initial state leaves for these parameter values (TF tensors)."""
    with self.chain.x64():
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
    with self.chain.x64():
      return self._update(list(params), list(gradients), list(state), learning_rate)

  def assigning_step(self, assign: Callable[[Any, tf.Tensor], Any] | None = None) -> Callable:
    """A ``tf.function(jit_compile=True)`` that reads, updates and assigns resource variables.

    One XLA cluster around the whole step lets XLA update the variables in
    place; run outside a cluster, the converted op's outputs are fresh buffers
    that the assignments then copy (measured ~4x slower in a TF1 Session).
    Inside a caller's ``jit_compile=True`` function it is inlined. The
    variables are arguments rather than captures, so under ``tf.distribute``
    the same step updates each device's copies of mirrored variables.

    The gradients enter the cluster flattened. Inside it, a reshape is a view
    that every loop reading it pays for with index arithmetic per element
    (measured about 2.5x slower for a ``(C, C, 3, 3)`` gradient read by loops
    over flat state). Outside the cluster, as in a TF1 graph, the reshape is
    free; inside a caller's cluster it costs what it did before.

    Args:
      assign: ``assign(variable, value)`` writes one result (called while
        tracing); by default ``variable.assign(value)``. Keras passes its
        optimizer's ``assign``.

    Returns:
      ``step(params, state, gradients, learning_rate, frozen=()) -> True``:
      ``params`` and ``state`` are the variables in the order of ``names`` and
      :attr:`leaves`; ``frozen`` holds indices of parameters that are left
      untouched, with the state leaves that mirror them (global leaves such
      as step counts still advance).
    """
    assign = assign or (lambda variable, value: variable.assign(value))

    def step(params, state, gradients, learning_rate, frozen=()):
      new_params, new_state = self.update(
          [v.read_value() for v in params], gradients, [v.read_value() for v in state], learning_rate
      )
      _conventions.assign_unfrozen(assign, self.leaves, params, new_params, state, new_state,
                                   frozen)
      return tf.constant(True)  # something a TF1 graph can depend on

    compiled = tf.function(step, jit_compile=True, autograph=False)

    def flat_gradients_step(params, state, gradients, learning_rate, frozen=()):
      return compiled(params, state, [tf.reshape(g, [-1]) for g in gradients], learning_rate, frozen)

    return flat_gradients_step
