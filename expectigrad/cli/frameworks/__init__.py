"""One small module per framework that trains the demo's MLP.

Each module exposes ``make_trainer(init_params, optimizer) -> Trainer`` for
every name in :data:`OPTIMIZERS`, with the hyperparameters below, so a
framework plugs in by adding a module and a line to :data:`_MODULES`.
"""

from __future__ import annotations

import importlib
import types
from typing import Protocol

import numpy as np

from expectigrad.cli.errors import UsageError

OPTIMIZERS = ('expectigrad', 'adam', 'amsgrad', 'sgd+momentum')
# Each optimizer's usual default learning rate (SGD has none; 0.05 is a
# common choice for a small MLP on standardised inputs). No tuning per
# dataset: the demo shows out-of-the-box behaviour.
LEARNING_RATES = {'expectigrad': 1e-3, 'adam': 1e-3, 'amsgrad': 1e-3, 'sgd+momentum': 0.05}
MOMENTUM = 0.9      # Expectigrad's beta, Adam's b1, SGD's momentum
EPSILON = 1e-8      # Keras' Adam defaults to 1e-7; every framework gets the same value

# framework -> the module that trains in it (imported only when asked for).
_MODULES = {
    'jax': 'expectigrad.cli.frameworks.jax_mlp',
    'torch': 'expectigrad.cli.frameworks.torch_mlp',
    'keras': 'expectigrad.cli.frameworks.keras_mlp',
}
FRAMEWORKS = tuple(_MODULES)
# framework -> (the pip extra that installs it, the top-level modules it brings).
# jax and optax are expectigrad's own dependencies: a plain install has them.
EXTRAS = {
    'jax': ('', ('jax', 'jaxlib', 'optax')),
    'torch': ('torch', ('torch',)),
    'keras': ('tensorflow', ('tensorflow', 'keras')),
}


def install_hint(extra: str) -> str:
  """The pip command that adds ``extra`` ('' for the plain package)."""
  suffix = f'[{extra}]' if extra else ''
  return f'pip install "expectigrad{suffix}" (from a checkout: pip install ".{suffix}")'


class Trainer(Protocol):
  """One optimizer training one MLP."""

  def step(self, x: np.ndarray, y: np.ndarray) -> None:
    """One optimizer step on a batch (may return before the work is done)."""

  def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``(x, y)``, as Python floats."""


class FrameworkUnavailable(UsageError):
  """A framework, or expectigrad's front end for it, is not installed (exit status 2)."""


def load(framework: str) -> types.ModuleType:
  """The trainer module of ``framework``.

  Raises:
    ValueError: if ``framework`` is not one of :data:`FRAMEWORKS`.
    FrameworkUnavailable: if it or expectigrad's optimizer for it cannot be
      imported; the message says what is missing and, for a missing
      framework, which extra installs it.
  """
  if framework not in _MODULES:
    raise ValueError(f'framework must be one of {FRAMEWORKS}, got {framework!r}.')
  try:
    return importlib.import_module(_MODULES[framework])
  except ImportError as error:
    missing = (error.name or '').partition('.')[0]
    extra, modules = EXTRAS[framework]
    if isinstance(error, ModuleNotFoundError) and missing in modules:
      raise FrameworkUnavailable(f'{missing} is not installed: {install_hint(extra)}') from error
    raise FrameworkUnavailable(f'the {framework} demo is unavailable: {error}') from error
