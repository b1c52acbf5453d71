"""Readable names for pytree path keys (kept for imports; see :mod:`._conventions`)."""

from expectigrad.bridges._conventions import key_name

__all__ = ['key_name']
