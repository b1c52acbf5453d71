"""A noisy quadratic: DeepOBS's ``quadratic_deep`` (Schneider et al., 2019).

``f(theta) = 0.5 (theta - x)^T H (theta - x)`` averaged over samples
``x ~ N(0, 0.6^2 I)`` in 100 dimensions; H = Q diag(lambda) Q^T with 90
eigenvalues uniform in (0, 1) and 10 in (30, 60) and a random rotation Q,
both fixed (DeepOBS draws them from seed 42, so does this). From
``theta = 1``, minibatches of 128 fresh samples a step (DeepOBS cycles a
fixed set of 1000; here the stream is endless, so the seed sets only the
noise). A minibatch's gradient is ``H (theta - mean(x))``, so a step draws
the mean of its 128 samples, ``N(0, 0.6^2 / 128 I)``, instead of the samples:
the same gradients, 128 times cheaper. Validation and test: 1000 held-out
samples each. The loss cannot go below ``0.5 * 0.36 * trace(H)``, the noise
floor.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from expectigrad.cli.reproduce import grid, protocol
from expectigrad.cli.reproduce.common import Context

TITLE = "Noisy quadratic: DeepOBS's quadratic_deep, 100 dimensions"
OPTIMIZERS = ('expectigrad', 'adam', 'amsgrad', 'adagrad', 'sgd+momentum', 'lion')
DIMENSION, NOISE, BATCH, HELD_OUT = 100, 0.6, 128, 1000
HESSIAN_SEED = 42


def hessian() -> np.ndarray:
  """DeepOBS's Hessian: 90 eigenvalues in (0, 1), 10 in (30, 60), randomly rotated."""
  rng = np.random.default_rng(HESSIAN_SEED)
  eigenvalues = np.concatenate([rng.uniform(0, 1, 90), rng.uniform(30, 60, 10)])
  rotation, _ = np.linalg.qr(rng.standard_normal((DIMENSION, DIMENSION)))
  return (rotation * eigenvalues) @ rotation.T


def _loss_on(h: jax.Array, theta: jax.Array, samples: jax.Array) -> jax.Array:
  differences = theta - samples
  return 0.5 * jnp.einsum('bi,ij,bj->b', differences, h, differences).mean()


def _init(key: jax.Array) -> jax.Array:
  del key   # DeepOBS starts every run from theta = 1
  return jnp.ones(DIMENSION)


def _loss(h: jax.Array, theta: jax.Array, noise_seed: jax.Array) -> jax.Array:
  """A minibatch's loss up to a constant in theta (so its gradient exactly): at the mean of the samples."""
  sample_mean = NOISE / np.sqrt(BATCH) * jax.random.normal(jax.random.key(noise_seed), (1, DIMENSION))
  return _loss_on(h, theta, sample_mean)


def _evaluate(h: jax.Array, theta: jax.Array, samples: jax.Array) -> dict[str, jax.Array]:
  return {'loss': _loss_on(h, theta, samples)}


def problem(context: Context) -> grid.Problem:
  """The quadratic, one object per run."""
  key = ('quadratic', 'problem')
  if key not in context.cache:
    h = jnp.asarray(hessian(), jnp.float32)
    context.cache[key] = grid.Problem(_init, functools.partial(_loss, h), functools.partial(_evaluate, h), 'loss')
  return context.cache[key]


def data(context: Context) -> grid.Data:
  """Each seed's per-step noise seeds and its held-out samples."""
  streams, held_out = [], {'validation': [], 'test': []}
  for s in grid.seeds(context):
    rng = np.random.default_rng(s)
    streams.append(rng.integers(0, 2**32, context.config.quadratic_steps, dtype=np.uint32))
    for split in held_out.values():
      split.append(NOISE * rng.standard_normal((HELD_OUT, DIMENSION)).astype(np.float32))
  return grid.Data(grid.keys(context), jnp.asarray(np.stack(streams)),
                   {split: jnp.asarray(np.stack(v)) for split, v in held_out.items()})


def run(context: Context) -> protocol.Tuned:
  """Every optimizer of :data:`OPTIMIZERS` over the grid."""
  scores = grid.run_optimizers(context, 'quadratic', problem(context), lambda: data(context), OPTIMIZERS)
  floor = 0.5 * NOISE**2 * np.trace(hessian())
  setting = (f'f(theta) = 0.5 (theta - x)^T H (theta - x), x ~ N(0, {NOISE:g}^2 I) in {DIMENSION} dimensions, H '
             f'with 90 eigenvalues in (0, 1) and 10 in (30, 60) (seed {HESSIAN_SEED}); '
             f'{context.config.quadratic_steps} steps of {BATCH} fresh samples from theta = 1. Loss on '
             f'{HELD_OUT} held-out samples (validation and test); the noise floor is {floor:.4g}.')
  return protocol.Tuned(TITLE, setting, scores, 'loss')


section, plot, claims = protocol.section, protocol.plot, protocol.claims
