"""Save and restore an optax state pytree as a numpy ``.npz`` file.

Each leaf is stored under its pytree path (``jax.tree_util.keystr``), so a
checkpoint is readable without this package and a mismatch can be reported by
name. Loading validates everything against a template state before building
the result, so a bad file raises and nothing is half-restored.

Saving never destroys the previous checkpoint: :func:`save` writes a
temporary file in the same folder, flushes and fsyncs it, and then renames
it over the target with ``os.replace`` (atomic within one filesystem), so a
crash or a kill mid-save leaves either the old file or the new one, never a
torn one. orbax-checkpoint was not adopted: for one optimizer state it would
add tensorstore and a dozen other packages (about 30 MB of wheels) to a
dependency list of three, for a directory format that needs orbax to read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
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


def _create_temporary(target: str) -> tuple[int, str]:
  """Opens a new, uniquely named file beside ``target``: ``(descriptor, path)``.

  Created like ``open(target, 'wb')`` would create it (mode 0o666 less the
  umask), which ``tempfile.mkstemp``'s 0o600 would not be.
  """
  directory, name = os.path.split(target)
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0)
  while True:
    temporary = os.path.join(directory, f'.{name}.{secrets.token_hex(6)}.tmp')
    try:
      return os.open(temporary, flags, 0o666), temporary
    except FileExistsError:
      continue


def _fsync_directory(directory: str) -> None:
  """Makes a rename in ``directory`` durable (POSIX; a no-op on Windows)."""
  if os.name == 'nt':
    return
  descriptor = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  except OSError as error:  # some filesystems cannot fsync a directory
    if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
      raise
  finally:
    os.close(descriptor)


def save(path: str | os.PathLike, state: Any) -> None:
  """Writes ``state`` to ``path`` (an ``.npz`` file), atomically.

  The file is named exactly ``path`` (no ``.npz`` suffix is added). The data
  goes to a temporary file ``.NAME.XXXXXXXXXXXX.tmp`` in the same folder,
  which is flushed, fsynced and renamed over ``path``; the folder is then
  fsynced so the rename itself survives a power loss. Until the rename, a
  reader (or a crash) sees the previous checkpoint untouched. A save that
  raises removes its temporary file; one that is killed may leave it behind
  (it is safe to delete, and later saves do not reuse its name). A symbolic
  link at ``path`` is followed: its target is replaced.
  """
  arrays = state_to_arrays(state)  # on the host before anything is written
  target = os.path.realpath(os.fspath(path))
  try:
    mode = stat.S_IMODE(os.stat(target).st_mode)  # an overwrite keeps the file's mode
  except FileNotFoundError:
    mode = None
  descriptor, temporary = _create_temporary(target)
  try:
    with os.fdopen(descriptor, 'wb') as file:
      np.savez(file, **arrays)
      file.flush()
      os.fsync(file.fileno())
    if mode is not None:
      os.chmod(temporary, mode)
    os.replace(temporary, target)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(temporary)
    raise
  _fsync_directory(os.path.dirname(target))


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
