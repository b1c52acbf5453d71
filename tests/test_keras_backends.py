"""The Keras optimizer on every Keras backend (jax, torch, tensorflow), each in its own process.

Keras fixes its backend at import, so ``tests/keras_backend_worker.py`` runs
once per backend and reports every check; the processes run one after the
other, each continuing the ``.keras`` files the earlier ones saved, then
TensorFlow and JAX continue the files of the later ones, so every ordered
pair of backends is crossed.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip('keras')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ('tensorflow', 'jax', 'torch')
# Which package each backend needs.
PACKAGES = {'tensorflow': 'tensorflow', 'jax': 'jax', 'torch': 'torch'}
# The checks each backend runs (tests/keras_backend_worker.py registers them per backend).
CHECK_NAMES = {
    'tensorflow': ['parity_tf_function_and_xla', 'plain_tf_variables_work_as_with_keras_adam'],
    'jax': ['parity_jitted_stateless_apply'],
    'torch': ['parity_lowered_torch_program'],
}
COMMON = [
    'parity_custom_loop', 'gradient_clipping', 'weight_decay_lr_alias_and_inverse_time_decay',
    'gradient_accumulation_steps', 'exponential_moving_average', 'loss_scale_optimizer',
    'learning_rate_schedule_and_custom_chain', 'variable_without_gradient_keeps_its_state',
    'first_step_without_some_gradients_updates_the_others',
    'unnamed_optimizers_get_unique_snake_case_names',
    'get_config_from_config', 'fit_save_load_resumes_bit_identically',
    'sparse_gradients_equal_dense', 'updates_go_through_the_optimizers_assign_methods',
    'wrong_shape_gradient_raises_before_anything_changes',
    'integer_and_complex_variables_raise_naming_the_variable', 'save',
]
CROSSED = [(a, b) for a in BACKENDS for b in BACKENDS if a != b]


def _available(backend):
  return importlib.util.find_spec(PACKAGES[backend]) is not None


def _run(backend, folder, load, load_only=False):
  env = dict(os.environ, KERAS_BACKEND=backend, JAX_ENABLE_X64='1',
             TF_CPP_MIN_LOG_LEVEL='3', OMP_WAIT_POLICY='PASSIVE')
  command = [sys.executable, '-m', 'tests.keras_backend_worker', str(folder), '--load', *load]
  if load_only:
    command.append('--load-only')
  out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  lines = out.stdout.strip().splitlines()
  try:
    return json.loads(lines[-1])
  except (IndexError, json.JSONDecodeError):
    return {'worker': f'exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}'}


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  """``{backend: {check: None | 'SKIP: ...' | traceback}}``, from one process per backend."""
  folder = tmp_path_factory.mktemp('keras_backends')
  done, saved = {}, []
  for backend in BACKENDS:
    if _available(backend):
      done[backend] = _run(backend, folder, saved)
      if done[backend].get('save', 'missing') is None:
        saved.append(backend)
  # Each backend continues the files of the backends that ran after it.
  for position, backend in enumerate(BACKENDS):
    late = [b for b in BACKENDS[position + 1:] if b in saved]
    if backend in done and late:
      done[backend].update(_run(backend, folder, late, load_only=True))
  return done


def _outcome(results, backend, name):
  if backend not in results:
    pytest.skip(f'{PACKAGES[backend]} is not installed')
  outcomes = results[backend]
  if 'worker' in outcomes:
    pytest.fail(outcomes['worker'])
  assert name in outcomes, f'{backend} did not run {name}: {sorted(outcomes)}'
  outcome = outcomes[name]
  if outcome is not None and outcome.startswith('SKIP: '):
    pytest.skip(outcome[6:])
  assert outcome is None, outcome


@pytest.mark.parametrize('name', COMMON)
@pytest.mark.parametrize('backend', BACKENDS)
def test_check(results, backend, name):
  _outcome(results, backend, name)


@pytest.mark.parametrize('backend,name', [(b, n) for b in BACKENDS for n in CHECK_NAMES[b]])
def test_backend_specific_check(results, backend, name):
  _outcome(results, backend, name)


@pytest.mark.parametrize('source,target', CROSSED, ids=[f'{a}->{b}' for a, b in CROSSED])
def test_keras_file_continues_on_another_backend(results, source, target):
  """A .keras file saved 10 steps in on one backend continues on another as the reference."""
  if source not in results or target not in results:
    pytest.skip('backend not installed')
  if results[source].get('save') is not None:
    pytest.fail(f'{source} could not save: {results[source].get("save")}')
  _outcome(results, target, f'load_{source}')
