"""Runs a script that makes fake CUDA tensors, in a process of its own (JAX on its CPU backend)."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(script: str, done_marker: str) -> None:
  """Runs ``script``; skips if this torch cannot make fake CUDA tensors, else asserts it printed the marker.

  The script prints ``FAKE_CUDA_UNAVAILABLE`` (and why) where the torch build
  cannot make fake CUDA tensors.
  """
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
                          capture_output=True, text=True, timeout=300, check=False)
  if 'FAKE_CUDA_UNAVAILABLE' in result.stdout:
    pytest.skip(f'this torch build cannot make fake CUDA tensors: {result.stdout.strip()}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert done_marker in result.stdout
