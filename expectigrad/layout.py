"""A CPU performance option: per-element state of small-kernel parameters kept raveled.

The transforms keep every state buffer in its parameter's shape (so
checkpoints, sharding and the TF/Keras/torch views of the state are plain).
On XLA:CPU that shape has a cost: an elementwise loop is vectorised along
the array's minor dimension, and when that is shorter than a vector register
(the ``3x3`` of convolution kernels) the loop runs scalar. Expectigrad's
update over ResNet-18's shapes took 3x as long with parameter-shaped state
as with the same buffers raveled (``python -m benchmarks.bench_jax``).
Reshaping inside the update does not help: the state written back must have
its stored shape, and XLA then loops over that shape again.

:func:`ravel_short_minor_dims` is that layout, as an explicit wrapper, in
this one place: wrap an elementwise transformation with it when training
convolutional networks on a CPU.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

# The shortest minor dimension XLA:CPU's loops vectorise well (a 512-bit
# register holds 16 float32).
MIN_VECTORISED_MINOR_DIM = 16


def ravels(x: Any) -> bool:
  """Whether :func:`ravel_short_minor_dims` stores ``x``'s state raveled.

  True for an array of two or more dimensions whose minor dimension is below
  :data:`MIN_VECTORISED_MINOR_DIM`, unless it is on several devices (or
  traced under a mesh of several devices): a sharded parameter keeps its
  layout so that its state is sharded like it. A one-device mesh counts as
  one device, so the answer does not change when a framework moves an array
  between its device and a one-device mesh (Keras's ``DataParallel`` on a
  one-device machine builds the variables on the device and runs the step
  on the mesh).
  """
  shape = jnp.shape(x)
  if len(shape) < 2 or shape[-1] >= MIN_VECTORISED_MINOR_DIM:
    return False
  if jax.sharding.get_abstract_mesh().size > 1:
    return False
  aval_sharding = getattr(jax.typeof(x), 'sharding', None)
  if aval_sharding is not None and aval_sharding.mesh.size > 1:
    return False
  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
    return len(x.sharding.device_set) == 1
  return True


def _ravel(tree: Any) -> Any:
  return jax.tree.map(lambda x: jnp.ravel(x) if ravels(x) else x, tree)


def ravel_short_minor_dims(transform: optax.GradientTransformation) -> optax.GradientTransformation:
  """``transform`` run on raveled views of the leaves that :func:`ravels` selects.

  The inner transformation sees those parameters and gradients as 1-D
  arrays, so its per-element state for them is 1-D; the updates it returns
  are reshaped back to the gradients' shapes. Leaves of one or more than
  ``MIN_VECTORISED_MINOR_DIM`` columns, and sharded ones, pass unchanged.

  Only for transformations that treat each leaf elementwise (every piece of
  :mod:`expectigrad.transforms`, ``optax.adam``, ``optax.sgd``, clipping by
  global norm): a transformation that uses a leaf's shape, such as
  ``optax.adafactor``'s factored moments, would compute something else.

  Example::

    opt = expectigrad.layout.ravel_short_minor_dims(expectigrad.expectigrad(1e-3))

  Args:
    transform: an elementwise ``optax.GradientTransformation``.

  Returns:
    An ``optax.GradientTransformation`` with the inner state, in which the
    selected leaves' buffers are 1-D (a checkpoint of it restores into the
    same wrapper, not into the bare transformation).
  """

  def init(params):
    return transform.init(_ravel(params))

  def update(updates, state, params=None):
    raveled, state = transform.update(_ravel(updates), state, _ravel(params))
    return jax.tree.map(lambda u, g: u.reshape(jnp.shape(g)), raveled, updates), state

  return optax.GradientTransformation(init, update)
