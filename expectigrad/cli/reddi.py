"""Reddi, Kale & Kumar (2018), "On the Convergence of Adam and Beyond", Section 3.

The online problem on x in [-1, 1] with ``f_t(x) = 3x`` when ``t mod 3 == 1``
and ``f_t(x) = -x`` otherwise. Over each period of three steps the total
gradient is +1, so regret is minimised at x = -1. Adam with
``b1 = 0, b2 = 1 / (1 + 3**2) = 0.1`` lets the rare large gradient decay out of
its second-moment estimate, so the frequent small ones win and it drifts to
the worst point, x = +1. Expectigrad's arithmetic mean never forgets the large
gradient and converges to -1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import expectigrad

STEPS = 3000
# Adam's hyperparameters on this problem: the paper's failing setting, b2 = 1 / (1 + C**2) with C = 3.
ADAM_B1, ADAM_B2 = 0.0, 0.1


def reddi_gradient(t: jax.Array) -> jax.Array:
  """The gradient of f_t (t counts from 1): 3 when t mod 3 == 1, else -1."""
  return jnp.where(t % 3 == 1, 3.0, -1.0)


def learning_rate(count: jax.Array) -> jax.Array:
  """0.5 / sqrt(t), the decaying step size of the paper's analysis (optax counts from 0)."""
  return 0.5 / jnp.sqrt(count + 1.0)


def optimizers() -> dict[str, optax.GradientTransformation]:
  """Adam with the paper's failing hyperparameters, and Expectigrad with its defaults."""
  return {
      'adam': optax.adam(learning_rate, b1=ADAM_B1, b2=ADAM_B2),
      'expectigrad': expectigrad.expectigrad(learning_rate),
  }


def trajectory(opt: optax.GradientTransformation, steps: int = STEPS) -> np.ndarray:
  """Projected online gradient steps from x = 0.

  Args:
    opt: the optimizer.
    steps: number of online rounds.

  Returns:
    ``x_0 .. x_steps`` as a float64 numpy array of length ``steps + 1``.
  """
  x = jnp.zeros(1)

  def step(carry, t):
    x, state = carry
    updates, state = opt.update(jnp.full(1, reddi_gradient(t)), state, x)
    x = jnp.clip(optax.apply_updates(x, updates), -1.0, 1.0)
    return (x, state), x[0]

  _, xs = jax.lax.scan(step, (x, opt.init(x)), jnp.arange(1, steps + 1))
  return np.concatenate([[0.0], np.asarray(xs, np.float64)])
