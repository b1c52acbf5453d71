"""Save and restore an optax state pytree as a numpy ``.npz`` file.

Each leaf is stored under its pytree path (``jax.tree_util.keystr``), so a
checkpoint is readable without this package and a mismatch can be reported by
name. Loading validates everything against a template state before building
the result, so a bad file raises and nothing is half-restored.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def state_to_arrays(state: Any) -> dict[str, np.ndarray]:
  """Flattens ``state`` to ``{pytree path: numpy array}`` (None leaves are skipped)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(state)
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def state_from_arrays(arrays: Mapping[str, Any], like: Any) -> Any:
  """Rebuilds a state shaped like ``like`` from ``{pytree path: array}``.

  Args:
    arrays: e.g. the output of :func:`state_to_arrays`, or an opened ``.npz``.
    like: a template state (e.g. ``opt.init(params)``) giving the structure,
      shapes and dtypes; it is not modified.

  Returns:
    A new state with the same tree structure as ``like``.

  Raises:
    ValueError: naming the first missing, unexpected or mismatched entry.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  expected = [jax.tree_util.keystr(path) for path, _ in leaves]
  missing = [key for key in expected if key not in arrays]
  unexpected = sorted(set(arrays) - set(expected))
  if missing or unexpected:
    raise ValueError(f'checkpoint does not match the optimizer state: missing {missing}, '
                     f'unexpected {unexpected}')
  restored = []
  for key, (_, template) in zip(expected, leaves):
    value = np.asarray(arrays[key])
    template_shape, template_dtype = np.shape(template), jnp.result_type(template)
    if value.shape != template_shape or value.dtype != template_dtype:
      raise ValueError(f'checkpoint entry {key} has shape {value.shape} and dtype {value.dtype}; '
                       f'the optimizer state needs shape {template_shape} and dtype {template_dtype}')
    restored.append(jnp.asarray(value))
  return jax.tree_util.tree_unflatten(treedef, restored)


def save(path: str | os.PathLike, state: Any) -> None:
  """Writes ``state`` to ``path`` (an ``.npz`` file)."""
  with open(path, 'wb') as file:
    np.savez(file, **state_to_arrays(state))


def load(path: str | os.PathLike, like: Any) -> Any:
  """Reads a state written by :func:`save`, validated against the template ``like``.

  Raises:
    ValueError: if the file is not a readable ``.npz`` or does not match ``like``.
  """
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {key: archive[key] for key in archive.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
    raise ValueError(f'{os.fspath(path)!r} is not a readable expectigrad checkpoint: {error}') from error
  return state_from_arrays(arrays, like)
