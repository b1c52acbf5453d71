"""Keras ``model.fit`` under ``tf.distribute.MirroredStrategy`` (2 logical CPUs) with Expectigrad.

Logical devices must be configured before TensorFlow initialises, so the run
happens in a fresh process. Its weights and optimizer state must equal a
single-device fit on the same batches (float64, so only the summation order
of the all-reduce can differ), on both replicas.
"""

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip('tensorflow')
pytest.importorskip('keras')
pytest.importorskip('sklearn')

SCRIPT = textwrap.dedent('''
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from sklearn.datasets import load_digits
    from expectigrad.tensorflow2 import Expectigrad

    keras.config.set_floatx('float64')
    x, y = load_digits(return_X_y=True)
    x, y = x[:512] / 16.0, y[:512]

    def fit(strategy):
      with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation='relu'),
                                  keras.layers.Dense(10)])
        model.compile(optimizer=Expectigrad(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
      history = model.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0)
      return model, history.history['loss']

    one, one_loss = fit(tf.distribute.get_strategy())
    two, two_loss = fit(tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']))

    def replicas(variable):  # each device's copy
      return [v.numpy() for v in getattr(variable.value, 'values', [variable.value])]

    def max_difference(single, mirrored):
      assert len(single) == len(mirrored)
      return max(float(np.max(np.abs(a.numpy() - copy), initial=0.0))
                 for a, b in zip(single, mirrored) for copy in replicas(b))

    print(json.dumps(dict(
        replicas=len(replicas(two.weights[0])),
        mirrored=type(two.optimizer.variables[-1].value).__name__,
        iterations=[int(np.asarray(v)) for v in (one.optimizer.iterations, replicas(two.optimizer.iterations)[0])],
        weights=max_difference(one.weights, two.weights),
        state=max_difference(one.optimizer.variables, two.optimizer.variables),
        loss_drop=two_loss[-1] / two_loss[0],
    )))
''')


def test_mirrored_fit_matches_single_device():
  out = subprocess.run([sys.executable, '-c', SCRIPT], check=True, capture_output=True, text=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['replicas'] == 2
  assert result['mirrored'] == 'MirroredVariable'
  assert result['iterations'] == [16, 16]
  assert result['weights'] < 1e-12
  assert result['state'] < 1e-12
  assert result['loss_drop'] < 0.95  # it trains
