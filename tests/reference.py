"""An independent numpy reference of Expectigrad, and the test problems.

Written from the update rule in the paper/README, line by line, in float64,
sharing no code with the package. Every framework's parity test compares
against :func:`run_reference`.
"""

from __future__ import annotations

from typing import Callable

import math

import numpy as np


class ExpectigradReference:
  """Expectigrad on one float64 numpy vector, exactly as the update rule reads."""

  def __init__(self, x, lr=0.001, beta=0.9, eps=1e-8, sparse_counter=True, exact_sum=False):
    """``exact_sum``: s is the correctly rounded sum of all g**2 (math.fsum), not a running sum."""
    # Complex parameters stay complex (squares are |g|**2, as in optax.adam).
    self.x = np.array(x, dtype=np.result_type(np.asarray(x).dtype, np.float64))
    self.lr, self.beta, self.eps, self.sparse_counter = lr, beta, eps, sparse_counter
    self.squares = [] if exact_sum else None
    self.s = np.zeros(self.x.shape)  # real, also for complex x
    self.n = np.zeros(self.x.shape)
    self.m = np.zeros_like(self.x)
    self.t = 0

  def step(self, g):
    g = np.asarray(g, dtype=self.x.dtype)
    self.t += 1
    square = (g * np.conj(g)).real  # g**2, or |g|**2 for complex g
    if self.squares is None:
      self.s = self.s + square
    else:
      self.squares.append(square)
      self.s = np.array([math.fsum(column) for column in zip(*self.squares)])
    if self.sparse_counter:
      self.n = self.n + np.sign(square)
    else:
      self.n = np.full(self.x.shape, float(self.t))
    # Non-finite gradients are allowed (they propagate); keep numpy quiet about them.
    with np.errstate(invalid='ignore', divide='ignore'):
      mean = np.where(self.n > 0, self.s / self.n, 0.0)  # 0/0 := 0
      scaled = g / (self.eps + np.sqrt(mean))
    self.m = self.beta * self.m + (1 - self.beta) * scaled
    self.x = self.x - self.lr / (1 - self.beta**self.t) * self.m
    return self.x


def alternating_quadratic_grad(x: np.ndarray, t: int) -> np.ndarray:
  """Gradient of f_t(x) = 3 x0^2 (odd t), x0^2 + 8 x1^2 (even t); t starts at 1.

  On odd steps x1 gets a zero gradient, which exercises the sparse counter.
  """
  if t % 2 == 1:
    return np.array([6.0 * x[0], 0.0])
  return np.array([2.0 * x[0], 16.0 * x[1]])


QUADRATIC_X0 = np.array([1.0, 1.0])
QUADRATIC_LR = 0.5
QUADRATIC_EPS = 1.0
QUADRATIC_STEPS = 1000
# (beta, sparse_counter) configurations every framework must match.
CONFIGS = [(0.0, False), (0.9, False), (0.9, True)]


def run_reference(
    grad_fn: Callable[[np.ndarray, int], np.ndarray] = alternating_quadratic_grad,
    x0: np.ndarray = QUADRATIC_X0,
    steps: int = QUADRATIC_STEPS,
    **hyperparameters,
) -> np.ndarray:
  """Runs the reference for ``steps`` steps; returns the (steps + 1, dim) trajectory."""
  opt = ExpectigradReference(x0, **hyperparameters)
  trajectory = [opt.x.copy()]
  for t in range(1, steps + 1):
    trajectory.append(opt.step(grad_fn(opt.x, t)).copy())
  return np.stack(trajectory)


def max_relative_error(actual, expected) -> float:
  """max |a - e| / max(|e|, tiny) over all elements."""
  dtype = np.result_type(np.asarray(actual).dtype, np.asarray(expected).dtype, np.float64)
  actual, expected = np.asarray(actual, dtype), np.asarray(expected, dtype)
  scale = np.maximum(np.abs(expected), np.finfo(np.float64).tiny)
  return float(np.max(np.abs(actual - expected) / scale))
