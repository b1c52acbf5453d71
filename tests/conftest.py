"""Shared pytest fixtures."""

import jax
import pytest


@pytest.fixture(params=['jax', 'torch'])
def torch_cpu_path(request, monkeypatch):
  """Runs a torch test on each path the default executor can take on CPU.

  'jax': the JAX executor (the CPU default); 'torch': the lowered program,
  as it runs on a GPU.
  """
  from expectigrad.bridges import _torch_executor  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(_torch_executor, 'CPU_DEFAULT', request.param)
  return request.param


@pytest.fixture
def x64():
  """Runs the test with 64-bit JAX types, without touching the global setting."""
  with jax.enable_x64(True):
    yield


# Hypothesis profiles: "ci" (default, fast) and "full" (>= 1000 property cases
# in all). Choose with EXPECTIGRAD_PROFILE=full.
import os  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile('ci', max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile('full', max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get('EXPECTIGRAD_PROFILE', 'ci'))
