"""Step time of the TensorFlow optimizers against TF's Adam, on W1 and W2.

* keras: ``expectigrad.tensorflow2.Expectigrad`` vs ``keras.optimizers.Adam``,
  each ``apply_gradients`` inside ``tf.function(jit_compile=True)``;
* tf1: ``expectigrad.tensorflow1.ExpectigradOptimizer`` vs
  ``tf.compat.v1.train.AdamOptimizer``, one ``Session.run`` of the train op.

Run: ``python -m benchmarks.bench_tf [--workloads W1 W2] [--rounds N]``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from benchmarks import common


def _arrays(workload: str, seed: int) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.standard_normal(shape, dtype=np.float32) for shape in common.WORKLOADS[workload]]


def _applier(opt, params):
  """``grads -> None`` applying ``opt`` to ``params`` (a closure, so tf.function does not trace them)."""
  def apply(gradients):
    opt.apply(gradients, params)
  return apply


def _keras_steps(workload: str) -> dict[str, Callable[[], None]]:
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from expectigrad.tensorflow2 import Expectigrad  # pylint: disable=import-outside-toplevel

  gradients = [tf.constant(g * 1e-3) for g in _arrays(workload, 1)]
  steps = {}
  for name, opt in [('keras.optimizers.Adam', keras.optimizers.Adam(1e-3)),
                    ('Expectigrad (bridge)', Expectigrad(1e-3))]:
    params = [keras.Variable(p) for p in _arrays(workload, 0)]
    opt.build(params)
    apply = tf.function(_applier(opt, params), jit_compile=True)
    # Fetching one element of a parameter waits for the step (eager dispatch is
    # asynchronous) without copying the whole tensor to the host.
    steps[name] = lambda apply=apply, params=params: (apply(gradients), params[0].value[:1].numpy())
  return steps


def _tf1_steps(workload: str) -> dict[str, Callable[[], None]]:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from expectigrad.tensorflow1 import ExpectigradOptimizer  # pylint: disable=import-outside-toplevel

  steps = {}
  for name, make in [('tf.compat.v1.train.AdamOptimizer', tf.compat.v1.train.AdamOptimizer),
                     ('ExpectigradOptimizer (bridge)', ExpectigradOptimizer)]:
    graph = tf.Graph()
    with graph.as_default():
      params = [tf.compat.v1.Variable(p) for p in _arrays(workload, 0)]
      gradients = [tf.compat.v1.Variable(g * 1e-3, trainable=False) for g in _arrays(workload, 1)]
      train_op = make(1e-3).apply_gradients(list(zip(gradients, params)))
      init = tf.compat.v1.global_variables_initializer()
    session = tf.compat.v1.Session(graph=graph)
    session.run(init)
    steps[name] = lambda session=session, train_op=train_op: session.run(train_op)
  return steps


def run(workloads: Sequence[str] = ('W1', 'W2'), rounds: int = 15) -> list[common.Row]:
  """Times the Keras pair and the TF1 pair interleaved, per workload."""
  bandwidth = common.streaming_bandwidth_gbps()
  rows = []
  for workload in workloads:
    lower_bound = common.lower_bound_ms(workload, bandwidth)
    keras_steps, tf1_steps = _keras_steps(workload), _tf1_steps(workload)
    medians = common.interleaved_medians({**keras_steps, **tf1_steps}, rounds)
    rows += common.make_rows('keras', workload, {k: medians[k] for k in keras_steps}, lower_bound,
                             baseline='keras.optimizers.Adam')
    rows += common.make_rows('tf1', workload, {k: medians[k] for k in tf1_steps}, lower_bound,
                             baseline='tf.compat.v1.train.AdamOptimizer')
  return rows


if __name__ == '__main__':
  common.main(run, __doc__.splitlines()[0])
