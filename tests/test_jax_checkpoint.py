"""JAX state through .npz: bit-exact resume, clear errors on bad files."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import expectigrad
from expectigrad import checkpoint


def _setup():
  opt = optax.chain(optax.clip_by_global_norm(1.0), expectigrad.expectigrad(optax.cosine_decay_schedule(0.1, 50)))
  params = {'w': jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), 'b': jnp.zeros(3), 'frozen': None}

  @jax.jit
  def step(params, state, t):
    grads = jax.tree.map(lambda p: jnp.where(jnp.arange(p.size).reshape(p.shape) % 2 == t % 2,
                                             jnp.cos(p + t), 0.0), params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return opt, params, step


def _run(step, params, state, start, stop):
  for t in range(start, stop):
    params, state = step(params, state, t)
  return params, state


def test_resume_from_npz_is_bit_exact(tmp_path):
  opt, params, step = _setup()
  straight, straight_state = _run(step, params, opt.init(params), 0, 40)
  half, half_state = _run(step, params, opt.init(params), 0, 20)
  checkpoint.save(tmp_path / 'opt.npz', half_state)
  restored = checkpoint.load(tmp_path / 'opt.npz', like=opt.init(params))
  resumed, resumed_state = _run(step, half, restored, 20, 40)
  for name in ('w', 'b'):
    np.testing.assert_array_equal(resumed[name], straight[name])
  jax.tree.map(np.testing.assert_array_equal, resumed_state, straight_state)


def test_mismatched_checkpoint_names_the_entry(tmp_path):
  opt, params, _ = _setup()
  checkpoint.save(tmp_path / 'small.npz', opt.init({'w': jnp.zeros((2, 2)), 'b': jnp.zeros(3)}))
  with pytest.raises(ValueError, match=r"sum_of_squares\['w'\] has shape .* needs shape"):
    checkpoint.load(tmp_path / 'small.npz', like=opt.init(params))
  checkpoint.save(tmp_path / 'other.npz', expectigrad.expectigrad(0.1, sparse_counter=False).init(params))
  with pytest.raises(ValueError, match='does not match the optimizer state: missing'):
    checkpoint.load(tmp_path / 'other.npz', like=opt.init(params))


def test_corrupted_file_raises_value_error(tmp_path):
  opt, params, _ = _setup()
  path = tmp_path / 'broken.npz'
  checkpoint.save(path, opt.init(params))
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(ValueError, match='not a readable expectigrad checkpoint'):
    checkpoint.load(path, like=opt.init(params))
