"""Random optimisation problems for the property tests, and how to check a run.

A :class:`Case` fixes everything about a run: the parameter shape (0-d and
empty included), dtype, hyperparameters, the sparsity of the gradients and
the number of steps. Each framework's runner maps a case to the final
parameters; :func:`check_against_reference` compares them with the numpy
reference run in float64.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import strategies as st

from tests import reference

SHAPES = [(), (0,), (1,), (7,), (3, 0), (4, 5), (2, 3, 3)]


@dataclasses.dataclass(frozen=True)
class Case:
  shape: tuple
  dtype: str
  lr: float
  beta: float
  eps: float
  sparse_counter: bool
  steps: int
  density: float
  seed: int

  def initial_params(self) -> np.ndarray:
    return np.random.default_rng(self.seed).uniform(-1.0, 1.0, self.shape).astype(self.dtype)

  def gradients(self) -> np.ndarray:
    """(steps, *shape) gradients; each element is zero with probability 1 - density."""
    rng = np.random.default_rng(self.seed + 1)
    values = rng.normal(size=(self.steps, *self.shape)) * rng.lognormal(0.0, 1.0)
    return (values * (rng.random(values.shape) < self.density)).astype(self.dtype)


def _f32(x: float) -> float:
  """The float32 nearest to ``x`` (hypothesis needs bounds exact at width 32)."""
  return float(np.float32(x))


cases = st.builds(
    Case,
    shape=st.sampled_from(SHAPES),
    dtype=st.sampled_from(['float32', 'float64']),
    # Exact in float32, so frameworks that hold hyperparameters in float32
    # variables (Keras) run the same numbers as the float64 reference.
    lr=st.floats(_f32(1e-4), 1.0, width=32),
    beta=st.one_of(st.just(0.0), st.floats(0.0, _f32(0.999), width=32)),
    eps=st.floats(_f32(1e-8), 1.0, width=32),
    sparse_counter=st.booleans(),
    steps=st.integers(1, 25),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)


def check_against_reference(case: Case, final_params: np.ndarray) -> None:
  """Asserts the run matches the float64 reference (1e-10 in float64, 1e-4 in float32)."""
  final_params = np.asarray(final_params)
  assert final_params.shape == case.shape
  assert final_params.dtype == np.dtype(case.dtype)
  grads = case.gradients().astype(np.float64).reshape(case.steps, -1)
  expected = reference.run_reference(
      lambda x, t: grads[t - 1], case.initial_params().astype(np.float64).reshape(-1), case.steps,
      lr=case.lr, beta=case.beta, eps=case.eps, sparse_counter=case.sparse_counter)[-1]
  # Each step moves an element by at most lr / (1 - beta^t) * |m| <= lr-ish, so
  # errors are measured against the scale of the parameters and of the motion.
  scale = 1.0 + case.lr * case.steps
  tolerance = 1e-10 if case.dtype == 'float64' else 1e-4
  np.testing.assert_allclose(final_params.reshape(-1), expected, rtol=0, atol=tolerance * scale)
