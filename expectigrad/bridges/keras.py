"""Any optax chain as a Keras 3 optimizer, on every Keras backend.

The chain runs once per step over all the variables, as the backend can run
it (see :meth:`Optimizer.update_step`):

- ``KERAS_BACKEND=jax``: the optax chain itself, inside Keras's jitted step
  (:mod:`._keras_jax`);
- ``KERAS_BACKEND=torch``: the chain lowered to torch operations by
  :mod:`expectigrad.jax2torch`, so no JAX runs per step (:mod:`._keras_torch`);
- ``KERAS_BACKEND=tensorflow``: the chain converted by ``jax2tf`` into one
  XLA op, compiled into ``model.fit``'s XLA cluster and saved with the model
  (:mod:`._keras_tf`).

Each backend's module is registered in
:data:`expectigrad.bridges.KERAS_BACKENDS` and has the interface
:class:`Backend` describes.

Everything the Keras base class does around the update (clipnorm,
clipvalue, global_clipnorm, weight_decay, gradient accumulation, EMA, loss
scaling, the learning-rate schedule, ``tf.distribute``) is left to the base
class, through its public hooks: ``build``, ``apply`` and ``update_step``,
with every write through ``assign``. Matching Keras's per-variable calls to
the variables takes private names, all in :mod:`._private_keras`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ContextManager, Protocol, Sequence

import keras
import numpy as np

from expectigrad import bridges
from expectigrad.bridges import _conventions, _private_keras


class BackendChain(Protocol):
  """A chain over the Keras variables, as one backend runs it (``Backend.Chain``).

  Attributes:
    leaves: one :class:`~._conventions.StateLeaf` per state array (names as
      Keras variables have them, dtypes as numpy names).
  """

  leaves: list[_conventions.StateLeaf]

  def init(self, variables: Sequence[Any]) -> list[Any]:
    """The state's initial values for the variables' current values."""

  def step(self, params: Sequence[Any], state: Sequence[Any], gradients: Sequence[Any],
           learning_rate: Any, frozen: tuple[int, ...], assign: Callable[[Any, Any], None],
           in_place: bool) -> None:
    """One step over one device's variables and state variables.

    Args:
      params, state: the variables and the state variables (one device's copies).
      gradients: one dense gradient per variable (zeros where ``frozen``).
      learning_rate: the current learning rate.
      frozen: positions of variables without a gradient: their values and
        state are kept (shared state still advances).
      assign: the optimizer's ``assign``, through which every write goes
        unless ``in_place``.
      in_place: ``assign`` is Keras's own, so writes may be made in place.
    """


class Backend(Protocol):
  """What :class:`Optimizer` needs from the module that runs chains on one Keras backend.

  Such a module is registered by name in :data:`expectigrad.bridges.KERAS_BACKENDS`.
  """

  def Chain(self, transform: _conventions.TransformOrFactory, names: Sequence[str],  # pylint: disable=invalid-name
            shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str]) -> BackendChain:
    """The chain core over variables of these names, shapes and dtype names."""

  def initialising(self) -> ContextManager:
    """The context :meth:`Optimizer.build` creates the state variables in."""

  def gradient_shape(self, gradient: Any) -> tuple | None:
    """A gradient's static shape (None where unknown)."""

  def device_of(self, variable: Any) -> str:
    """The device of the copy of a variable Keras updates ('' without ``tf.distribute``)."""

  def local(self, variable: Any, device: str) -> Any:
    """The copy of ``variable`` on ``device``."""

  def dense_gradient(self, gradient: Any, variable: Any) -> Any:
    """A sparse gradient densified (duplicates summed); a dense one as it is."""

  def zeros_like(self, variable: Any) -> Any:
    """A zero gradient for a variable that received none."""


def _backend() -> Backend:
  """The module that runs chains on Keras's backend."""
  return bridges.keras_backend(keras.backend.backend())


def variable_name(variable: Any) -> str:
  """The key the chain sees a variable under: its Keras path, or a ``tf.Variable``'s name."""
  path = getattr(variable, 'path', None)
  if isinstance(path, str):
    return path
  return str(variable.name).split(':')[0]


def _slot_prefix(variable: Any) -> str:
  """The prefix of the names of a variable's optimizer variables, as Keras's own optimizers make it."""
  path = getattr(variable, 'path', None)
  if isinstance(path, str):
    return path.replace('/', '_')
  return str(variable.name).replace('/', '_').replace(':', '_')


def _shape(variable: Any) -> tuple[int, ...]:
  return tuple(int(d) for d in variable.shape)


def _in_shape(value: Any, variable: Any) -> Any:
  """``value`` reshaped to ``variable``'s shape if only the shape differs, else as it is."""
  shape = _shape(variable)
  if tuple(value.shape) != shape and math.prod(value.shape) == math.prod(shape):
    return np.reshape(value, shape)
  return value


def _slot_layout(leaf: Any, variables: Sequence[Any]) -> Any:
  """The layout of a state variable: its parameter's, as Keras's own optimizers give their slots.

  Keras's ``add_variable_from_reference`` (Adam's moments) copies the
  parameter's ``_layout``, so under a ``keras.distribution`` a slot is
  sharded like its parameter. A state array of another shape than its
  parameter's (a factored moment), or a shared one (a step count), gets
  None: the distribution's default layout for its path, replicated unless
  a ``LayoutMap`` names it.

  Args:
    leaf: a ``_conventions.StateLeaf`` of the chain's state.
    variables: the optimized variables, indexed by ``leaf.owner``.

  Returns:
    The owner's layout (a ``TensorLayout``, a backend layout or None), or None.
  """
  if leaf.owner is None:
    return None
  owner = variables[leaf.owner]
  if tuple(leaf.shape) != _shape(owner):
    return None
  return _private_keras.layout(owner)


class Optimizer(keras.optimizers.Optimizer):
  """A Keras optimizer that updates all variables with one optax chain.

  Example::

    import optax, expectigrad
    from expectigrad.bridges import keras as bridge

    chain = lambda learning_rate: optax.chain(
        optax.clip_by_global_norm(1.0), expectigrad.expectigrad(learning_rate))
    model.compile(optimizer=bridge.Optimizer(chain, learning_rate=1e-3), loss=...)

  The chain sees the parameters as a dict keyed by the variables' paths, so
  ``optax.masked`` / ``optax.multi_transform`` can select them by name. Its
  state lives in Keras variables made in :meth:`build`, with the shapes the
  chain's ``init`` gives them: one per state array that mirrors a parameter
  (named ``<variable path>_<state path>``) and one per shared array (step
  counts). A trainable variable that receives no gradient is skipped with
  its optimizer state, as in ``torch.optim``; the shared state advances.
  Sparse gradients (``tf.IndexedSlices``, JAX ``BCOO``, torch sparse) are
  densified (duplicate rows summed). Plain ``tf.Variable``s work on the
  TensorFlow backend, as with Keras's own optimizers.

  Args:
    transform: an ``optax.GradientTransformation`` used as is (it carries its
      own learning rate; ``learning_rate`` then only scales Keras's
      ``weight_decay``), or a factory called as ``transform(learning_rate=lr)``
      with the current Keras learning rate as a traced scalar inside the
      step, e.g. ``expectigrad.expectigrad`` or
      ``functools.partial(expectigrad.expectigrad, beta=0.8)`` (the bridges'
      one contract, see :mod:`expectigrad.bridges._conventions`).
    learning_rate: a float, a ``keras.optimizers.schedules.LearningRateSchedule``
      or a zero-argument callable, as for any Keras optimizer.
    name: the optimizer's name.
    **kwargs: Keras's own optimizer arguments (``clipnorm``, ``clipvalue``,
      ``global_clipnorm``, ``weight_decay``, ``gradient_accumulation_steps``,
      ``use_ema``, ``loss_scale_factor``, ...).

  Raises:
    TypeError: if ``transform`` is neither a transformation nor callable; at
      build, if a variable is not real floating point (integer, bool, complex).
    ValueError: when applying, if a gradient's shape is not its variable's
      (before anything changes).
  """

  def __init__(
      self,
      transform: _conventions.TransformOrFactory,
      learning_rate: Any = 0.001,
      name: str | None = None,
      **kwargs,
  ):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    # Fails at construction, not at the first step.
    self._transform = _conventions.check_transform(transform)
    self._chain = None
    self._state: list = []
    self._pending: dict = {}
    self._expected = 0

  def build(self, variables: Sequence[Any]) -> None:
    """Creates the optimizer variables holding the chain's state for ``variables``.

    Raises:
      TypeError: naming the variable, if one is not real floating point
        (before anything is created).
    """
    if self.built:
      return
    variables = list(variables)
    for variable in variables:
      _conventions.check_floating(f"variable '{variable_name(variable)}'", variable.dtype)
    super().build(variables)
    backend = _backend()
    self._chain = backend.Chain(
        self._transform,
        names=[variable_name(v) for v in variables],
        shapes=[_shape(v) for v in variables],
        dtypes=[_conventions.dtype_name(v.dtype) for v in variables],
    )
    # ``self._expected`` is left alone: Keras builds inside the first
    # ``apply``, after it counted the gradients update_step will receive.
    # The chain's init may depend on parameter values (e.g. lookahead), so it
    # runs on the current values.
    with backend.initialising():
      initial = self._chain.init(variables)
      self._state = [
          self.add_variable(
              leaf.shape,
              initializer=lambda shape, dtype, value=value: value,
              dtype=leaf.dtype,
              layout=_slot_layout(leaf, variables),
              name=(leaf.name if leaf.owner is None
                    else f'{_slot_prefix(variables[leaf.owner])}_{leaf.name}'),
          )
          for leaf, value in zip(self._chain.leaves, initial)
      ]

  def load_own_variables(self, store) -> None:
    """Loads the state as Keras's optimizers do, whether it was saved raveled or not.

    A chain's state layout may depend on where the parameters live:
    :func:`expectigrad.layout.ravel_short_minor_dims` ravels a small
    kernel's state on one device and keeps its shape on several (any
    ``keras.distribution``). So that a ``.keras`` file moves between
    shardings, as one of Keras's Adam does, a saved array of another shape
    than its variable's but as many elements takes the variable's shape
    (row-major, as raveled).

    Args:
      store: the saved arrays, keyed ``'0'``, ``'1'``, ... in
        :attr:`variables` order.
    """
    if len(store.keys()) == len(self.variables):
      store = {str(i): _in_shape(store[str(i)], variable)
               for i, variable in enumerate(self.variables)}
    super().load_own_variables(store)

  def apply(self, grads, trainable_variables=None):
    """Checks the gradients' shapes, then applies them as any Keras optimizer.

    Raises:
      ValueError: naming the variable and both shapes, if a gradient's shape
        is not its variable's; nothing has changed then.
      TypeError: if a variable is not real floating point (see :meth:`build`).
    """
    grads = list(grads)
    variables = (_private_keras.trainable_variables(self) if trainable_variables is None
                 else list(trainable_variables))
    if len(grads) == len(variables):
      backend = _backend()
      for gradient, variable in zip(grads, variables):
        if gradient is None:
          continue
        label = f"variable '{variable_name(variable)}'"
        _conventions.check_floating(label, variable.dtype)
        shape = backend.gradient_shape(gradient)
        if shape is not None:
          _conventions.check_gradient_shape(label, shape, _shape(variable))
    # Keras calls update_step once per variable with a gradient: the chain runs
    # at the last of them.
    self._expected = sum(
        1 for gradient, variable in zip(grads, variables)
        if gradient is not None and not getattr(variable, 'overwrite_with_gradient', False))
    self._pending = {}
    return super().apply(grads, trainable_variables)

  def update_step(self, gradient, variable, learning_rate):
    """Collects the step's gradients; at the last one, runs the chain over all variables.

    Keras calls this once per variable with a gradient (under
    ``tf.distribute``, once per variable and device). The chain needs them all
    at once, so the calls are gathered per device, and the last call of a
    device runs one step there: every trainable variable and state array is
    read, the chain computes the new values, and each is written with
    :meth:`assign`. Variables without a gradient get a zero gradient and
    keep their values and state.
    """
    backend = _backend()
    device = backend.device_of(variable)
    pending = self._pending.setdefault(device, {})
    pending[_private_keras.variable_index(self, variable)] = (gradient, variable)
    model_variables = _private_keras.trainable_variables(self)
    if len(pending) < (self._expected or len(model_variables)):
      return
    del self._pending[device]
    params, gradients = [], []
    for index, model_variable in enumerate(model_variables):
      if index in pending:
        gradient, local = pending[index]
        params.append(local)
        gradients.append(backend.dense_gradient(gradient, local))
      else:
        local = backend.local(model_variable, device)
        params.append(local)
        gradients.append(backend.zeros_like(local))
    frozen = tuple(i for i in range(len(params)) if i not in pending)
    state = [backend.local(variable, device) for variable in self._state]
    self._chain.step(params, state, gradients, learning_rate, frozen, self._assign_through,
                     in_place=self._assign_is_keras_own())

  def _assign_is_keras_own(self) -> bool:
    """Whether ``assign`` is Keras's (a copy into the variable), not a subclass's or a patch.

    Then a backend may write variables in place, as Keras's own torch
    optimizers do; otherwise every write goes through :meth:`assign`.
    """
    return 'assign' not in vars(self) and type(self).assign is keras.optimizers.Optimizer.assign

  def _assign_through(self, target, value) -> None:
    # Looked up at every call, so a patched ``assign`` is seen (Keras's own tests do that).
    self.assign(target, value)
