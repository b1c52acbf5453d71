"""Restore a ``tf.train.Checkpoint`` only after the whole file has been read.

``tf.train.Checkpoint.restore`` assigns variables one read at a time (TF1
optimizers restore each slot separately), so a file that is corrupted half-way
leaves some variables restored and others not. Reading every tensor first,
which checks every checksum, makes a corrupted file fail before anything is
assigned.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf


def verified_restore(checkpoint: tf.train.Checkpoint, path: str | os.PathLike) -> Any:
  """Reads every tensor of ``path``, then restores ``checkpoint`` from it.

  Args:
    checkpoint: the ``tf.train.Checkpoint`` holding the model and optimizer.
    path: a checkpoint prefix, as returned by ``Checkpoint.save``.

  Returns:
    The restore status of ``checkpoint.restore(path)``.

  Raises:
    tf.errors.DataLossError: if any tensor fails its checksum (nothing restored).
    tf.errors.NotFoundError: if there is no checkpoint at ``path``.
    ValueError: from ``restore``, if shapes do not match (TF may have
      assigned some variables by then: restore into freshly built objects).
  """
  reader = tf.train.load_checkpoint(os.fspath(path))
  try:
    for key in reader.get_variable_to_shape_map():
      reader.get_tensor(key)  # reading checks the tensor's checksum
  except (RuntimeError, tf.errors.OpError) as error:
    # The reader reports a bad checksum as a generic error; restore() would
    # raise DataLossError, so raise that too.
    if isinstance(error, tf.errors.DataLossError):
      raise
    raise tf.errors.DataLossError(None, None, str(error)) from error
  return checkpoint.restore(path)
