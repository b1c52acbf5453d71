"""Reddi et al. (2018): the online problem on which Adam converges to the worst point."""

import numpy as np

from expectigrad.cli import reddi


def test_adam_goes_to_the_worst_point_and_expectigrad_to_the_optimum():
  optimizers = reddi.optimizers()
  adam = reddi.trajectory(optimizers['adam'])
  ours = reddi.trajectory(optimizers['expectigrad'])
  assert len(adam) == len(ours) == reddi.STEPS + 1
  np.testing.assert_allclose([adam[-1], ours[-1]], [1.0, -1.0], atol=1e-2)
  # Converged, not passing through: the last thousand rounds stay near the end point.
  assert adam[-1000:].min() > 0.9
  assert ours[-1000:].max() < -0.9


def test_gradient_sums_to_plus_one_over_each_period():
  """So the optimum of the summed loss on [-1, 1] is x = -1."""
  grads = np.asarray(reddi.reddi_gradient(np.arange(1, 7)))
  np.testing.assert_array_equal(grads, [3.0, -1.0, -1.0, 3.0, -1.0, -1.0])
