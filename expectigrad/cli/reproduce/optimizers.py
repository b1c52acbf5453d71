"""The optimizers the experiments compare, each as ``learning rate -> optax transformation``.

Expectigrad is :func:`expectigrad.expectigrad`; the competitors are optax's own.
Momentum 0.9 (Expectigrad's beta, Adam's b1, SGD's momentum) and eps 1e-8
everywhere they apply; everything else is each library's default. The
functions are module-level so that ``jit`` compiles each once and the run's
cache finds a grid already trained.
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

import expectigrad
from expectigrad import transforms
from expectigrad.cli.frameworks import EPSILON, MOMENTUM

Factory = Callable[[jax.Array], optax.GradientTransformation]
EMA_DECAY = 0.999   # Adam's b2, the EMA denominator of the ablation variants


def expectigrad_sparse(lr: jax.Array) -> optax.GradientTransformation:
  return expectigrad.expectigrad(lr, beta=MOMENTUM, eps=EPSILON)


def expectigrad_dense(lr: jax.Array) -> optax.GradientTransformation:
  return expectigrad.expectigrad(lr, beta=MOMENTUM, eps=EPSILON, sparse_counter=False)


def adam(lr: jax.Array) -> optax.GradientTransformation:
  return optax.adam(lr, b1=MOMENTUM, eps=EPSILON)


def adamw(lr: jax.Array) -> optax.GradientTransformation:
  return optax.adamw(lr, b1=MOMENTUM, eps=EPSILON)


def amsgrad(lr: jax.Array) -> optax.GradientTransformation:
  return optax.amsgrad(lr, b1=MOMENTUM, eps=EPSILON)


def sgd_momentum(lr: jax.Array) -> optax.GradientTransformation:
  return optax.sgd(lr, momentum=MOMENTUM)


def arithmetic_inner(lr: jax.Array) -> optax.GradientTransformation:
  """Expectigrad's arithmetic denominator with Adam's (inner) momentum placement."""
  return optax.chain(transforms.inner_momentum(transforms.arithmetic_rms(eps=EPSILON), MOMENTUM),
                     transforms.scale_by_lr(lr))


def ema_outer(lr: jax.Array) -> optax.GradientTransformation:
  """Adam's EMA denominator with Expectigrad's (outer) momentum placement."""
  return optax.chain(transforms.scale_by_ema_rms(EMA_DECAY, EPSILON), transforms.outer_momentum(MOMENTUM),
                     transforms.scale_by_lr(lr))


FACTORIES: dict[str, Factory] = {
    'expectigrad': expectigrad_sparse, 'expectigrad (dense n)': expectigrad_dense, 'adam': adam,
    'adamw': adamw, 'amsgrad': amsgrad, 'adagrad': optax.adagrad, 'sgd+momentum': sgd_momentum,
    'lion': optax.lion, 'arithmetic + inner': arithmetic_inner, 'EMA + outer': ema_outer,
}
# Each one's usual default learning rate: the paper's 1e-3 for Expectigrad and the Adam family (and the
# ablation variants between them), PyTorch's 1e-2 for Adagrad, Keras' 1e-2 for SGD, the Lion paper's 1e-4.
DEFAULT_LRS: dict[str, float] = {
    'expectigrad': 1e-3, 'expectigrad (dense n)': 1e-3, 'adam': 1e-3, 'adamw': 1e-3, 'amsgrad': 1e-3,
    'adagrad': 1e-2, 'sgd+momentum': 1e-2, 'lion': 1e-4, 'arithmetic + inner': 1e-3, 'EMA + outer': 1e-3,
}
