"""Expectigrad for JAX (optax), PyTorch and TensorFlow.

``import expectigrad`` loads JAX and optax only. The framework front ends
``expectigrad.pytorch``, ``expectigrad.tensorflow1`` and
``expectigrad.tensorflow2`` (and ``expectigrad.bridges``) are imported the
first time they are accessed, so torch and TensorFlow stay optional.
"""

from __future__ import annotations

import importlib
from typing import Any

from expectigrad import hyperparameters, layout, transforms
from expectigrad.alias import expectigrad
from expectigrad.transforms import (
    arithmetic_rms,
    ema_rms,
    inner_momentum,
    outer_momentum,
    scale_by_arithmetic_rms,
    scale_by_ema_rms,
    scale_by_lr,
    scale_by_preconditioner,
)

__version__ = '0.1.0'

# Lazily imported submodule -> the pip extra that provides what it needs.
_LAZY_MODULES = {
    'pytorch': 'torch',
    'tensorflow1': 'tensorflow',
    'tensorflow2': 'tensorflow',
    'bridges': None,
}

__all__ = [
    'arithmetic_rms',
    'ema_rms',
    'expectigrad',
    'hyperparameters',
    'layout',
    'inner_momentum',
    'outer_momentum',
    'scale_by_arithmetic_rms',
    'scale_by_ema_rms',
    'scale_by_lr',
    'scale_by_preconditioner',
    'transforms',
]


def __getattr__(name: str) -> Any:
  if name not in _LAZY_MODULES:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  try:
    module = importlib.import_module(f'{__name__}.{name}')
  except ModuleNotFoundError as error:
    extra = _LAZY_MODULES[name]
    if extra is None or error.name is None or error.name.startswith(__name__):
      raise
    raise ImportError(
        f'expectigrad.{name} needs {error.name!r}, which is not installed; '
        f'install it with: pip install "expectigrad[{extra}]"'
    ) from error
  globals()[name] = module
  return module
