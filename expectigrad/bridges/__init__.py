"""Run any optax ``GradientTransformation`` as a torch, TF1 or Keras optimizer.

Every bridge is the framework's side of one chain core
(:mod:`expectigrad.bridges._conventions`): its variables or tensors, its state
dict, its hooks. The adapters are registered here, in one place, by module
name, so that importing this package imports no framework: each adapter
imports its framework when it is itself imported (see docs/architecture.md).
"""

from __future__ import annotations

import importlib
import types

# Framework -> the module of its bridge (an ``Optimizer`` class over the chain core).
ADAPTERS: dict[str, str] = {
    'torch': 'expectigrad.bridges.torch',
    'tf1': 'expectigrad.bridges.tf1',
    'keras': 'expectigrad.bridges.keras',
}

# Keras backend (``keras.backend.backend()``) -> the module that runs a chain on
# it, with the interface :class:`expectigrad.bridges.keras.Backend` documents.
KERAS_BACKENDS: dict[str, str] = {
    'jax': 'expectigrad.bridges._keras_jax',
    'tensorflow': 'expectigrad.bridges._keras_tf',
    'torch': 'expectigrad.bridges._keras_torch',
}


def keras_backend(name: str) -> types.ModuleType:
  """The module that runs chains on the Keras backend ``name``.

  Raises:
    NotImplementedError: for a backend without one (``'numpy'``, ``'openvino'``).
  """
  if name not in KERAS_BACKENDS:
    raise NotImplementedError(f'the Keras backend {name!r} is not supported '
                              f'(use one of {sorted(KERAS_BACKENDS)}).')
  return importlib.import_module(KERAS_BACKENDS[name])
