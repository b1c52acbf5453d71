"""Ready-made optimizers composed from :mod:`expectigrad.transforms`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from expectigrad import transforms
from expectigrad.hyperparameters import DEFAULT


def expectigrad(
    learning_rate: optax.ScalarOrSchedule = DEFAULT.learning_rate,
    beta: float = DEFAULT.beta,
    eps: float = DEFAULT.eps,
    sparse_counter: bool = DEFAULT.sparse_counter,
    state_dtype: Any = None,
    compensated_sum: bool = False,
) -> optax.GradientTransformation:
  """The Expectigrad optimizer (Daley & Amato, arXiv:2010.01356).

  Per element, with gradient ``g`` at step ``t``::

    s <- s + g**2
    n <- n + (g**2 != 0)          # or n = t when sparse_counter is False
    m <- beta * m + (1 - beta) * g / (eps + sqrt(s / n))     # 0/0 := 0
    x <- x - learning_rate / (1 - beta**t) * m

  It is ``optax.chain(scale_by_arithmetic_rms(eps, sparse_counter),
  outer_momentum(beta), scale_by_lr(learning_rate))``, with each update cast
  to its gradient's dtype at the end (as ``optax.adam``). Under
  ``optax.inject_hyperparams`` pass ``static_args=('sparse_counter',
  'state_dtype', 'compensated_sum')``, since those decide the shape of the state.

  Args:
    learning_rate: a number >= 0 or an ``optax.Schedule``.
    beta: momentum decay in [0, 1); 0 keeps no momentum buffer, also when
      ``optax.inject_hyperparams`` passes it to an unjitted ``init`` (under
      ``jax.jit`` its value is unknown there, and the buffer is kept).
    eps: added to the root mean square; must be > 0.
    sparse_counter: count nonzero gradients per element (True) or use the
      global step count (False).
    state_dtype: dtype of the optimizer's float buffers; None means the
      parameter's dtype promoted to at least float32 (bfloat16 and float16
      parameters get float32 state; the update is computed in it and
      rounded once, to the gradient's dtype). The counters are always int32.
    compensated_sum: keep the running sum of squared gradients with Kahan
      summation, in one more buffer per parameter: a float32 sum then stays
      exact to a few ulps over any number of steps (without it, the mean of
      equal-size squared gradients is 1.6% low after 1e7 steps). Recommended
      for runs beyond a few million steps, and with a bfloat16 ``state_dtype``.

  Returns:
    An ``optax.GradientTransformation``.

  Raises:
    ValueError: if ``learning_rate < 0``, ``beta`` is outside [0, 1) or ``eps <= 0``;
      at ``update``, if a gradient's shape differs from its parameter's.
    TypeError: if a hyperparameter is not a real number (``learning_rate`` may
      be a schedule) or ``sparse_counter``/``compensated_sum`` not a bool; at ``init``, for an
      integer or bool parameter.
  """
  return _in_gradient_dtype(optax.chain(
      transforms.scale_by_arithmetic_rms(
          eps=eps, sparse_counter=sparse_counter, state_dtype=state_dtype,
          compensated_sum=compensated_sum,
      ),
      transforms.outer_momentum(beta=beta, state_dtype=state_dtype),
      transforms.scale_by_lr(learning_rate),
  ))


def _in_gradient_dtype(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """``inner`` with each update cast to its gradient's dtype, as ``optax.adam`` returns it.

  The chain computes in its float32 state, so bfloat16/float16 gradients
  would give float32 updates; rounding once at the end keeps that precision
  and gives ``lax.cond``/``scan`` bodies that return their parameters' dtype.

  Args:
    inner: the transformation whose updates are cast; its state is unchanged.

  Returns:
    An ``optax.GradientTransformation`` with ``inner``'s state.
  """
  def update_fn(updates, state, params=None):
    new_updates, state = inner.update(updates, state, params)
    return jax.tree.map(lambda u, g: u.astype(jnp.result_type(g)), new_updates, updates), state

  return optax.GradientTransformation(inner.init, update_fn)
