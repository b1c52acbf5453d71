"""Sharded parameters on an 8-device host mesh keep their sharding through the optimizer."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_state_is_sharded_like_params_and_results_match_unsharded():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, str(ROOT / 'tests' / 'sharding_check.py')],
                          capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.count('state sharded like the parameters') == 3
