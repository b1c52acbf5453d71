"""What the Keras backends without ``tf.distribute`` (jax, torch) share.

Keras's JAX and torch trainers hand the optimizer one copy of each variable,
so there is no per-device copy to find; the TF backend's module answers the
same questions under ``tf.distribute`` (see :mod:`expectigrad.bridges._keras_tf`).
"""

from __future__ import annotations

from typing import Any


def gradient_shape(gradient: Any) -> tuple | None:
  return tuple(int(d) for d in gradient.shape)


def device_of(variable: Any) -> str:
  del variable
  return ''


def local(variable: Any, device: str) -> Any:
  del device
  return variable
