"""The CPU layout wrapper (expectigrad.layout): same numbers, raveled small-kernel state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import expectigrad
from expectigrad import layout
from tests import reference

_SHAPES = {'conv': (8, 4, 3, 3), 'wide': (3, 32), 'bias': (8,), 'scalar': (), 'frozen': None}


def _params(dtype=jnp.float32):
  key = jax.random.key(0)
  return {name: None if shape is None else jax.random.normal(key, shape, dtype)
          for name, shape in _SHAPES.items()}


def _gradients(params, t):
  return jax.tree.map(lambda p: jnp.where(jnp.abs(p) > 0.3 * (t % 3), jnp.cos(p * (t + 1)), 0.0),
                      params)


def test_state_of_small_kernels_is_raveled_and_other_leaves_keep_their_shape():
  params = _params()
  plain = expectigrad.expectigrad(1e-2).init(params)[0]
  wrapped = layout.ravel_short_minor_dims(expectigrad.expectigrad(1e-2)).init(params)[0]
  for name, shape in _SHAPES.items():
    if shape is None:
      continue
    assert plain.sum_of_squares[name].shape == shape
    expected = (int(np.prod(shape)),) if name == 'conv' else shape
    assert wrapped.sum_of_squares[name].shape == expected
    assert wrapped.nonzero_count[name].shape == expected
  assert wrapped.sum_of_squares['frozen'] is None


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('chain', ['expectigrad', 'clipped', 'ablation'])
def test_wrapped_chains_match_the_plain_chain_and_the_reference(chain):
  make = {
      'expectigrad': lambda: expectigrad.expectigrad(0.05, beta=0.8),
      'clipped': lambda: optax.chain(optax.clip_by_global_norm(1.0), expectigrad.expectigrad(0.05)),
      'ablation': lambda: optax.chain(
          expectigrad.transforms.inner_momentum(expectigrad.transforms.ema_rms(), beta=0.9),
          expectigrad.scale_by_lr(0.05)),
  }[chain]
  params = _params(jnp.float64)
  runs = []
  for opt in (make(), layout.ravel_short_minor_dims(make())):
    x, state = params, opt.init(params)
    step = jax.jit(lambda x, s, t, opt=opt: opt.update(_gradients(x, t), s, x))
    for t in range(30):
      updates, state = step(x, state, t)
      x = optax.apply_updates(x, updates)
    runs.append(x)
  for name, shape in _SHAPES.items():
    if shape is not None:
      np.testing.assert_allclose(runs[1][name], runs[0][name], rtol=1e-12, atol=1e-14)
      assert runs[1][name].shape == shape
  if chain == 'expectigrad':
    _replay_against_reference(params, layout.ravel_short_minor_dims(make()))


def _replay_against_reference(params, opt):
  """Steps ``opt`` and the numpy reference on the same gradients (1e-10, float64)."""
  x, state = params, opt.init(params)
  refs = {name: reference.ExpectigradReference(np.ravel(params[name]), lr=0.05, beta=0.8)
          for name in ('conv', 'wide', 'bias')}
  for t in range(30):
    grads = _gradients(x, t)
    updates, state = opt.update(grads, state, x)
    x = optax.apply_updates(x, updates)
    for name, ref in refs.items():
      ref.step(np.ravel(grads[name]))
      assert reference.max_relative_error(np.ravel(x[name]), ref.x) < 1e-10


def test_gradient_shape_errors_name_the_leaf_through_the_wrapper():
  params = _params()
  opt = layout.ravel_short_minor_dims(expectigrad.expectigrad(1e-2))
  state = opt.init(params)
  grads = dict(_gradients(params, 1), bias=jnp.ones(5))
  with pytest.raises(ValueError, match=r"gradient \['bias'\] has shape \(5,\)"):
    opt.update(grads, state, params)
