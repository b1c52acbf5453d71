"""Keras's distribution API on the JAX backend (8 host devices) with Expectigrad.

Under ``keras.distribution.DataParallel`` and ``ModelParallel`` (a
``LayoutMap`` sharding kernels' columns over a ``model`` axis), ``model.fit``
(``jit_compile=True``) and a jitted ``stateless_apply`` must give the
weights and optimizer state of the same run on one device (float64, so only
the summation order of the sharded loss can differ), and each state variable
must be laid out as Keras's Adam lays out its moments under the same
distribution: like its parameter, each device holding its parameter's share.

Host devices and the Keras backend are fixed when JAX and Keras start, so
the runs happen in one fresh process, which prints one JSON object.
"""

import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip('keras')

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import contextlib
    import json
    import tempfile
    import jax
    jax.config.update('jax_enable_x64', True)
    import jax.numpy as jnp
    import keras
    import numpy as np
    from benchmarks import keras_state_memory as memory
    from expectigrad.tensorflow2 import Expectigrad

    keras.config.set_floatx('float64')
    RUNS = memory.distributions(keras)
    # A script written for several devices, run on one.
    RUNS['DataParallel on one device'] = keras.distribution.DataParallel(
        devices=keras.distribution.list_devices()[:1])
    rng = np.random.RandomState(0)
    x = rng.randn(128, 16)
    y = np.tanh(x @ rng.randn(16, 8))

    def scope(name):
      return RUNS[name].scope() if RUNS[name] else contextlib.nullcontext()

    def model(optimizer):
      # The (32, 8) kernel's state is raveled on one device (minor dimension < 16).
      keras.utils.set_random_seed(0)
      model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation='tanh', name='hidden'),
                                keras.layers.Dense(8, name='out')], name='mlp')
      model.compile(optimizer=optimizer, loss='mse', jit_compile=True)
      model.optimizer.build(model.trainable_variables)
      return model

    def gradients(params, t):
      # Zeros on some elements and steps exercise the sparse counter.
      return [jnp.where(jnp.abs(p) > 0.1 * (t % 3), jnp.sin(p * (t + 1)), 0.0) for p in params]

    def stateless(optimizer):
      step = jax.jit(optimizer.stateless_apply)
      params = [v.value for v in optimizer._trainable_variables]
      state = [v.value for v in optimizer.variables]
      for t in range(6):
        params, state = step(state, gradients(params, t), params)
      return params, state

    def spec(array):
      # Mesh axes per dimension, trailing unsharded ones dropped (P(None, None) is P()).
      if not hasattr(array.sharding, 'spec'):
        return None
      axes = [str(axis) for axis in array.sharding.spec]
      while axes and axes[-1] == 'None':
        axes.pop()
      return axes

    def on_first_device(array):
      return [list(s.data.shape) for s in array.addressable_shards if s.device == jax.devices()[0]][0]

    def values(variables):
      return [np.asarray(v.value).ravel().tolist() for v in variables]

    def run(name):
      with scope(name):
        fitted = model(Expectigrad(0.01))
        fitted.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
        fitted.save(f'{FOLDER}/{name}.keras')
        params, state = stateless(model(Expectigrad(0.01)).optimizer)
        adam = keras.optimizers.Adam(0.01)
        adam.build(fitted.trainable_variables)
      prefixes = {v.path.replace('/', '_') + '_': v for v in fitted.trainable_variables}
      adam_specs = {v.name: spec(v.value) for v in adam.variables}
      layouts = {}
      for variable in fitted.optimizer.variables:
        owner = [p for prefix, p in prefixes.items() if variable.name.startswith(prefix)]
        layouts[variable.name] = dict(
            spec=spec(variable.value), shard=on_first_device(variable.value),
            owner=owner[0].path if owner else None,
            owner_shape=list(owner[0].shape) if owner else None,
            owner_spec=spec(owner[0].value) if owner else None,
            owner_shard=on_first_device(owner[0].value) if owner else None,
            adam_spec=adam_specs.get(owner[0].path.replace('/', '_') + '_momentum') if owner else None)
      return dict(
          weights=values(fitted.weights), state=values(fitted.optimizer.variables),
          names=[v.name for v in fitted.optimizer.variables],
          stateless_params=[np.asarray(p).ravel().tolist() for p in params],
          stateless_state=[np.asarray(s).ravel().tolist() for s in state],
          stateless_specs=[spec(s) for s in state],
          layouts=layouts)

    def resume(saved, name):
      # One more epoch from the .keras file saved under the sharding ``saved``.
      with scope(name):
        resumed = keras.saving.load_model(f'{FOLDER}/{saved}.keras')
        resumed.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
      return dict(weights=values(resumed.weights), state=values(resumed.optimizer.variables),
                  specs=[spec(v.value) for v in resumed.optimizer.variables])

    FOLDER = tempfile.mkdtemp()
    runs = {name: run(name) for name in RUNS}
    runs['resumed'] = {f'{saved} on {name}': resume(saved, name) for saved, name in [
        ('one device', 'one device'), ('ModelParallel', 'one device'),
        ('one device', 'ModelParallel')]}
    print(json.dumps(runs))
''')


@pytest.fixture(scope='module')
def runs():
  env = dict(os.environ, KERAS_BACKEND='jax', JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT),
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  out = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True, env=env,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-5000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def max_difference(one, other):
  assert [len(a) for a in one] == [len(b) for b in other]
  return max(max(abs(a - b) for a, b in zip(u, v)) for u, v in zip(one, other) if u)


@pytest.mark.parametrize('name', ['DataParallel', 'ModelParallel', 'DataParallel on one device'])
def test_fit_and_stateless_apply_equal_one_device(runs, name):
  one, sharded = runs['one device'], runs[name]
  assert sharded['names'] == one['names']
  assert max_difference(one['weights'], sharded['weights']) < 1e-12
  assert max_difference(one['state'], sharded['state']) < 1e-12
  assert max_difference(one['stateless_params'], sharded['stateless_params']) < 1e-12
  assert max_difference(one['stateless_state'], sharded['stateless_state']) < 1e-12
  # It trained: the fitted weights moved from the initial ones (same seed in every run).
  assert max_difference(one['weights'], sharded['stateless_params']) > 1e-3


@pytest.mark.parametrize('name', ['DataParallel', 'ModelParallel'])
def test_state_is_laid_out_like_its_parameter_and_adams_moments(runs, name):
  layouts = runs[name]['layouts']
  owned = {n: v for n, v in layouts.items() if v['owner'] is not None}
  # sum_of_squares, nonzero_count and momentum of each of the 4 parameters.
  assert len(owned) == 12
  for variable, layout in owned.items():
    assert layout['spec'] == layout['owner_spec'] == layout['adam_spec'], (variable, layout)
    assert layout['shard'] == layout['owner_shard'], (variable, layout)
  for variable, layout in layouts.items():
    if layout['owner'] is None:  # step counts, Keras's iteration and learning rate
      assert layout['spec'] == [], (variable, layout)
  # The stateless path's results keep the layout (state in optimizer.variables order).
  assert runs[name]['stateless_specs'] == [layout['spec'] for layout in layouts.values()]


def test_model_parallel_shards_every_kernels_state_over_the_model_axis(runs):
  """Each device holds a quarter of every parameter's state, the raveled (32, 8) kernel's too."""
  for variable, layout in runs['ModelParallel']['layouts'].items():
    if layout['owner'] is not None:
      assert 'model' in layout['spec'], (variable, layout)
      assert 4 * math.prod(layout['shard']) == math.prod(layout['owner_shape']), (variable, layout)
  one = runs['one device']['layouts']
  assert one['mlp_out_kernel_momentum']['shard'] == [256]  # raveled on one device


def test_keras_files_move_between_one_device_and_model_parallel(runs):
  """A .keras file saved under one sharding resumes under the other as on one device."""
  resumed = runs['resumed']
  expected = resumed['one device on one device']
  for case in ['ModelParallel on one device', 'one device on ModelParallel']:
    assert max_difference(expected['weights'], resumed[case]['weights']) < 1e-12, case
    assert max_difference(expected['state'], resumed[case]['state']) < 1e-12, case
  layouts = runs['ModelParallel']['layouts'].values()
  assert resumed['one device on ModelParallel']['specs'] == [layout['spec'] for layout in layouts]


def test_docs_memory_table_is_measured():
  """docs/performance.md quotes benchmarks/keras_state_memory.py's table (nothing in it is timed)."""
  printed = subprocess.run([sys.executable, '-m', 'benchmarks.keras_state_memory'], cwd=ROOT,
                           capture_output=True, text=True, check=True,
                           env={**os.environ, 'JAX_PLATFORMS': 'cpu'}).stdout.strip()
  docs = (ROOT / 'docs' / 'performance.md').read_text()
  assert docs.split('<!-- keras-state-memory -->\n')[1].split('<!-- /keras-state-memory -->')[0].strip() \
      == printed
