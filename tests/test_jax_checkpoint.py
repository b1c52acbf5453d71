"""JAX state through .npz: bit-exact resume, clear errors on bad files, atomic saves."""

import os
import pathlib
import stat
import subprocess
import sys
import time

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


# --- Atomic saves: a failed or killed save never destroys the previous checkpoint.

_REPO = pathlib.Path(__file__).resolve().parent.parent

# Saves a ~32 MB state to argv[1]. After the second of its four arrays is in
# the file, it creates argv[2] and sleeps, so the parent kills it mid-write.
_SLOW_SAVE = '''
import pathlib, sys, time
import numpy as np
import numpy.lib.format as npy_format
from expectigrad import checkpoint

path, marker = sys.argv[1], pathlib.Path(sys.argv[2])
write_array, written = npy_format.write_array, []

def write_then_stall(fid, array, *args, **kwargs):
  write_array(fid, array, *args, **kwargs)
  written.append(array.nbytes)
  if len(written) == 2:
    fid.flush()
    marker.write_text(str(sum(written)))
    time.sleep(120)

npy_format.write_array = write_then_stall
checkpoint.save(path, {f'big{i}': np.full(2**21, i + 1.0, np.float32) for i in range(4)})
print('the save finished: it was never stalled')
'''


def _trained_state():
  opt, params, step = _setup()
  _, state = _run(step, params, opt.init(params), 0, 7)
  return opt, params, state


def _assert_bit_exact(loaded, expected):
  for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected), strict=True):
    assert np.asarray(got).dtype == np.asarray(want).dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_killed_save_leaves_the_previous_checkpoint_intact(tmp_path):
  opt, params, state_a = _trained_state()
  folder = tmp_path / 'checkpoints'
  folder.mkdir()
  path = folder / 'opt.npz'
  checkpoint.save(path, state_a)
  marker = tmp_path / 'inside-the-write'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  child = subprocess.Popen([sys.executable, '-c', _SLOW_SAVE, str(path), str(marker)], cwd=_REPO,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + 60
    while not marker.exists():
      if child.poll() is not None:
        pytest.fail(f'the saving process exited before stalling:\n{child.stdout.read()}')
      if time.monotonic() > deadline:
        pytest.fail('the saving process never reached the middle of its write')
      time.sleep(0.01)
    child.kill()  # SIGKILL on POSIX: no handler, no cleanup
  finally:
    child.kill()
    child.wait()
  _assert_bit_exact(checkpoint.load(path, like=opt.init(params)), state_a)
  # The kill did land mid-write: 16 MB of the new checkpoint sit in a temporary file.
  leftovers = [p for p in folder.iterdir() if p != path]
  assert leftovers and max(p.stat().st_size for p in leftovers) >= int(marker.read_text())
  # The leftover does not get in the way of the next save.
  _, state_b = _run(_setup()[2], params, state_a, 7, 9)
  checkpoint.save(path, state_b)
  _assert_bit_exact(checkpoint.load(path, like=opt.init(params)), state_b)


def test_failed_save_removes_its_temporary_file(tmp_path, monkeypatch):
  opt, params, state = _trained_state()
  path = tmp_path / 'opt.npz'
  checkpoint.save(path, state)

  def disk_full(file, **arrays):
    file.write(b'PK\x03\x04 half a zip')
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(np, 'savez', disk_full)
  with pytest.raises(OSError, match='No space left'):
    checkpoint.save(path, opt.init(params))
  assert sorted(tmp_path.iterdir()) == [path]
  _assert_bit_exact(checkpoint.load(path, like=opt.init(params)), state)


def test_save_keeps_the_given_name_and_the_file_mode(tmp_path):
  opt, params, state = _trained_state()
  path = tmp_path / 'opt.ckpt'  # np.savez(path) would append .npz; save does not
  checkpoint.save(str(path), state)
  assert sorted(tmp_path.iterdir()) == [path]
  _assert_bit_exact(checkpoint.load(path, like=opt.init(params)), state)
  if os.name == 'posix':
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o640)
    checkpoint.save(path, state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.skipif(os.name != 'posix', reason='symbolic links')
def test_save_through_a_symbolic_link_replaces_its_target(tmp_path):
  opt, params, state = _trained_state()
  (tmp_path / 'real').mkdir()
  target = tmp_path / 'real' / 'opt.npz'
  link = tmp_path / 'latest.npz'
  link.symlink_to(target)
  checkpoint.save(link, state)
  assert link.is_symlink() and target.is_file()
  _assert_bit_exact(checkpoint.load(target, like=opt.init(params)), state)
