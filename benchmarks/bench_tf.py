"""Step time of the Keras optimizer on each Keras backend, and of the TF1 optimizer, against Adam.

* keras[tensorflow], keras[jax], keras[torch]: ``expectigrad.tensorflow2.Expectigrad``
  vs that backend's own ``keras.optimizers.Adam``, each run as that backend's
  trainer runs it: TF, ``apply`` inside ``tf.function(jit_compile=True)``; JAX,
  ``stateless_apply`` inside ``jax.jit`` with the variables donated; torch,
  ``apply`` eagerly (Keras's default) and, as ``jit_compile=True`` does,
  under ``torch.compile``;
* tf1: ``expectigrad.tensorflow1.ExpectigradOptimizer`` vs
  ``tf.compat.v1.train.AdamOptimizer``, one ``Session.run`` of the train op
  (timed interleaved with keras[tensorflow]).

Keras fixes its backend at import, so each backend is timed in its own
process, its rows interleaved (one run per backend).

Run: ``python -m benchmarks.bench_tf [--workloads W1 W2] [--rounds N]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Callable, Sequence

import numpy as np

from benchmarks import common

BACKENDS = ('tensorflow', 'jax', 'torch')
ADAM = 'keras.optimizers.Adam'
OURS = 'Expectigrad (bridge)'


def _arrays(workload: str, seed: int) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.standard_normal(shape, dtype=np.float32) for shape in common.WORKLOADS[workload]]


def _optimizers():
  import keras  # pylint: disable=import-outside-toplevel

  from expectigrad.tensorflow2 import Expectigrad  # pylint: disable=import-outside-toplevel
  return [(ADAM, keras.optimizers.Adam(1e-3)), (OURS, Expectigrad(1e-3))]


def _applier(opt, params):
  """``grads -> None`` applying ``opt`` to ``params`` (a closure, so tf.function does not trace them)."""
  def apply(gradients):
    opt.apply(gradients, params)
  return apply


def _tensorflow_steps(workload: str) -> dict[str, Callable[[], None]]:
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  gradients = [tf.constant(g * 1e-3) for g in _arrays(workload, 1)]
  steps = {}
  for name, opt in _optimizers():
    params = [keras.Variable(p) for p in _arrays(workload, 0)]
    opt.build(params)
    apply = tf.function(_applier(opt, params), jit_compile=True)
    # Fetching one element of a parameter waits for the step (eager dispatch is
    # asynchronous) without copying the whole tensor to the host.
    steps[f'{name}, jit_compile=True'] = (
        lambda apply=apply, params=params: (apply(gradients), params[0].value[:1].numpy()))
  return steps


def _jax_steps(workload: str) -> dict[str, Callable[[], None]]:
  import jax  # pylint: disable=import-outside-toplevel
  import keras  # pylint: disable=import-outside-toplevel

  gradients = [jax.numpy.asarray(g * 1e-3) for g in _arrays(workload, 1)]
  steps = {}
  for name, opt in _optimizers():
    params = [keras.Variable(p) for p in _arrays(workload, 0)]
    opt.build(params)
    step = jax.jit(lambda opt_vars, values, g, opt=opt: opt.stateless_apply(opt_vars, g, values),
                   donate_argnums=(0, 1))
    state = {'values': [p.value for p in params], 'opt': [v.value for v in opt.variables]}

    def run(step=step, state=state):
      state['values'], state['opt'] = step(state['opt'], state['values'], gradients)
      jax.block_until_ready(state['values'])
    steps[f'{name}, jitted stateless_apply'] = run
  return steps


def _torch_steps(workload: str) -> dict[str, Callable[[], None]]:
  import keras  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  gradients = [torch.from_numpy(g * 1e-3) for g in _arrays(workload, 1)]
  steps = {}
  for compiled in (False, True):
    for name, opt in _optimizers():
      params = [keras.Variable(p) for p in _arrays(workload, 0)]
      opt.build(params)
      apply = lambda opt=opt, params=params: opt.apply(gradients, params)
      if compiled:
        apply = torch.compile(apply)
      steps[f'{name}, {"torch.compile" if compiled else "eager"}'] = apply
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


def _worker(backend: str, workloads: Sequence[str], rounds: int, bandwidth: float) -> list[common.Row]:
  """Times one backend's rows interleaved (in the process whose Keras backend it is)."""
  make = {'tensorflow': _tensorflow_steps, 'jax': _jax_steps, 'torch': _torch_steps}[backend]
  rows = []
  for workload in workloads:
    lower_bound = common.lower_bound_ms(workload, bandwidth)
    keras_steps = make(workload)
    tf1_steps = _tf1_steps(workload) if backend == 'tensorflow' else {}
    medians = common.interleaved_medians({**keras_steps, **tf1_steps}, rounds)
    for variant in sorted({name.split(', ', 1)[1] for name in keras_steps}):
      pair = {k: medians[k] for k in keras_steps if k.endswith(variant)}
      rows += common.make_rows(f'keras[{backend}]', workload, pair, lower_bound,
                               baseline=f'{ADAM}, {variant}')
    if tf1_steps:
      rows += common.make_rows('tf1', workload, {k: medians[k] for k in tf1_steps}, lower_bound,
                               baseline='tf.compat.v1.train.AdamOptimizer')
  return rows


def run(workloads: Sequence[str] = ('W1', 'W2'), rounds: int = 15,
        backends: Sequence[str] = BACKENDS) -> list[common.Row]:
  """Times each Keras backend (and TF1, with the TensorFlow backend) in its own process."""
  bandwidth = common.streaming_bandwidth_gbps()
  rows = []
  for backend in backends:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL='3')
    command = [sys.executable, '-m', 'benchmarks.bench_tf', '--worker', backend,
               '--bandwidth', repr(bandwidth), '--rounds', str(rounds), '--workloads', *workloads]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
      raise RuntimeError(f'the {backend} benchmark failed:\n{out.stderr[-4000:]}')
    rows += [common.Row(**row) for row in json.loads(out.stdout.strip().splitlines()[-1])]
  return rows


def _main() -> None:
  if '--worker' not in sys.argv:
    common.main(run, __doc__.splitlines()[0])
    return
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser()
  parser.add_argument('--worker', choices=BACKENDS, required=True)
  parser.add_argument('--bandwidth', type=float, required=True)
  parser.add_argument('--rounds', type=int, required=True)
  parser.add_argument('--workloads', nargs='+', required=True)
  args = parser.parse_args()
  rows = _worker(args.worker, args.workloads, args.rounds, args.bandwidth)
  print(json.dumps([dataclasses.asdict(row) for row in rows]))
  sys.stdout.flush()
  os._exit(0)  # pylint: disable=protected-access


if __name__ == '__main__':
  _main()
