"""Readable names for pytree path keys, shared by the torch and TF bridges."""

from __future__ import annotations

from typing import Any


def key_name(key: Any) -> str:
  """The name, dict key or index of one pytree path key (``GetAttrKey``, ``DictKey``, ...)."""
  for attribute in ('name', 'key', 'idx'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)
