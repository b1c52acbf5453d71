"""The expected side of the bridges' custom-chain tests: an optax chain run in JAX itself."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def trajectory(chain: optax.GradientTransformation, x0: np.ndarray,
               gradients: Sequence[np.ndarray]) -> np.ndarray:
  """The iterates ``x_0 .. x_T`` of ``chain`` on fixed gradients, in float64."""
  with jax.enable_x64(True):
    x = jnp.asarray(x0, jnp.float64)
    state = chain.init(x)
    iterates = [np.asarray(x)]
    for g in gradients:
      updates, state = chain.update(jnp.asarray(g, jnp.float64), state, x)
      x = optax.apply_updates(x, updates)
      iterates.append(np.asarray(x))
  return np.stack(iterates)
