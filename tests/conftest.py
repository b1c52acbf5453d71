"""Shared pytest fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
  """Runs the test with 64-bit JAX types, without touching the global setting."""
  with jax.enable_x64(True):
    yield
