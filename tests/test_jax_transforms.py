"""Validation, counters, dtypes and JAX transformations (jit, vmap, scan, inject_hyperparams)."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import expectigrad
from expectigrad import transforms


@pytest.mark.parametrize('kwargs,match', [
    (dict(learning_rate=-1e-3), r'learning_rate must be a finite number >= 0'),
    (dict(learning_rate=float('nan')), r'learning_rate must be a finite number >= 0'),
    (dict(beta=1.0), r'beta must be in \[0, 1\)'),
    (dict(beta=-0.1), r'beta must be in \[0, 1\)'),
    (dict(eps=0.0), r'eps must be a finite number > 0'),
    (dict(eps=-1e-8), r'eps must be a finite number > 0'),
])
def test_invalid_hyperparameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    expectigrad.expectigrad(**kwargs)


def test_ablation_pieces_validate():
  with pytest.raises(ValueError, match='decay'):
    transforms.ema_rms(decay=1.0)
  with pytest.raises(ValueError, match='beta'):
    transforms.inner_momentum(transforms.ema_rms(), beta=1.5)
  with pytest.raises(ValueError, match='eps'):
    transforms.scale_by_arithmetic_rms(eps=0)


def test_schedules_are_accepted_without_validation():
  expectigrad.expectigrad(optax.linear_schedule(1e-3, 0.0, 10))


def _params():
  return {'w': jnp.ones((3, 2)), 'b': jnp.zeros(2), 'frozen': None}


def _grads(scale=1.0):
  return {'w': jnp.full((3, 2), scale).at[0, 0].set(0.0), 'b': jnp.array([scale, 0.0]), 'frozen': None}


def test_none_leaves_and_state_dtypes_are_stable_under_jit():
  opt = expectigrad.expectigrad(1e-2)
  params = _params()
  state = opt.init(params)
  step = jax.jit(opt.update)
  new_updates, new_state = step(_grads(), state, params)
  assert new_updates['frozen'] is None
  chex.assert_trees_all_equal_dtypes(state, new_state)
  chex.assert_trees_all_equal_shapes(state, new_state)
  rms = new_state[0]
  assert rms.count.dtype == jnp.int32
  assert jax.tree.map(lambda n: n.dtype, rms.nonzero_count) == {'w': jnp.int32, 'b': jnp.int32, 'frozen': None}
  np.testing.assert_array_equal(rms.nonzero_count['b'], [1, 0])


def test_lax_scan_keeps_state_dtypes():
  opt = expectigrad.expectigrad(optax.cosine_decay_schedule(1e-2, 100), beta=0.9)
  params = _params()

  def body(carry, scale):
    params, state = carry
    updates, state = opt.update(_grads(scale), state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, state), _ = jax.lax.scan(body, (params, opt.init(params)), jnp.linspace(1.0, 2.0, 20))
  assert int(state[0].count) == 20 and int(state[2].count) == 20
  assert float(params['b'][0]) < 0.0 and float(params['b'][1]) == 0.0


def test_lax_cond_branches_agree_on_state_types():
  opt = expectigrad.expectigrad(1e-2)
  params = _params()
  state = opt.init(params)

  def maybe_step(flag, state):
    return jax.lax.cond(flag, lambda s: opt.update(_grads(), s, params)[1], lambda s: s, state)

  chex.assert_trees_all_equal_dtypes(jax.jit(maybe_step)(True, state), state)


def test_vmap_over_independent_problems_matches_loop():
  opt = expectigrad.expectigrad(0.1, beta=0.5)
  grads = jax.random.normal(jax.random.key(0), (4, 5, 3))  # (problems, steps, dim)

  def run(g_seq):
    x = jnp.zeros(3)
    state = opt.init(x)
    for g in g_seq:
      u, state = opt.update(g, state)
      x = x + u
    return x

  batched = jax.jit(jax.vmap(run))(grads)
  for i in range(4):
    chex.assert_trees_all_close(batched[i], run(grads[i]), rtol=1e-6)


def test_inject_hyperparams_changes_lr_and_beta_without_recompiling():
  opt = optax.inject_hyperparams(expectigrad.expectigrad, static_args=('sparse_counter',))(
      learning_rate=0.1, beta=0.9, eps=1e-8, sparse_counter=True)
  params = _params()
  state = opt.init(params)
  step = jax.jit(opt.update)
  updates, state = step(_grads(), state, params)
  chex.assert_trees_all_close(updates['b'], jnp.array([-0.1, 0.0]))
  state.hyperparams['learning_rate'] = jnp.asarray(0.2, jnp.float32)
  updates, state = step(_grads(), state, params)
  chex.assert_trees_all_close(updates['b'], jnp.array([-0.2, 0.0]), rtol=1e-6)
  assert step._cache_size() == 1


@pytest.mark.parametrize('beta', [0.0, 0.9])
def test_inject_hyperparams_gives_the_state_structure_of_a_plain_call(beta):
  """However beta arrives (a Python number or inject_hyperparams' array), one state structure."""
  params = _params()
  plain = expectigrad.expectigrad(0.1, beta=beta)
  injected = optax.inject_hyperparams(expectigrad.expectigrad)(0.1, beta=beta)
  expected = jax.tree.structure(plain.init(params))
  state = injected.init(params)
  assert jax.tree.structure(state.inner_state) == expected
  for step in (injected.update, jax.jit(injected.update)):
    updates, new_state = step(_grads(), state, params)
    assert jax.tree.structure(new_state.inner_state) == expected
    chex.assert_trees_all_close(updates, plain.update(_grads(), plain.init(params), params)[0])


def test_unjitted_updates_reuse_one_compiled_computation_per_primitive(caplog):
  """A concrete step count must not be baked into a computation (integer_pow) compiled per step."""
  opt = expectigrad.expectigrad(1e-3)
  params = _params()
  rms, momentum, lr_state = opt.init(params)
  # Counts no other test reaches, so no computation is cached for them yet.
  count = jnp.asarray(54321, jnp.int32)
  state = (rms._replace(count=count), momentum._replace(count=count), lr_state)
  _, state = opt.update(_grads(), state, params)  # compiles each primitive once
  with jax.log_compiles(), caplog.at_level('WARNING'):
    for _ in range(2):
      _, state = opt.update(_grads(), state, params)
  assert not [r.getMessage() for r in caplog.records if 'Compiling' in r.getMessage()]


def test_counters_saturate_instead_of_wrapping():
  opt = expectigrad.expectigrad(1e-3)
  params = {'x': jnp.ones(2)}
  state = opt.init(params)
  top = jnp.iinfo(jnp.int32).max
  rms, momentum, lr_state = state
  rms = rms._replace(count=jnp.asarray(top - 1, jnp.int32),
                     nonzero_count={'x': jnp.array([top - 1, top], jnp.int32)},
                     sum_of_squares={'x': jnp.ones(2)})
  state = (rms, momentum._replace(count=jnp.asarray(top, jnp.int32)), lr_state)
  step = jax.jit(opt.update)
  for _ in range(2):
    updates, state = step({'x': jnp.ones(2)}, state)
  assert int(state[0].count) == top and int(state[1].count) == top
  np.testing.assert_array_equal(state[0].nonzero_count['x'], [top, top])
  assert np.all(np.isfinite(updates['x']))


def test_step_count_is_exact_past_float32_integers():
  """2**24 + 1 is not a float32; an int32 counter still steps past it."""
  opt = transforms.scale_by_arithmetic_rms(sparse_counter=False)
  state = opt.init(jnp.ones(1))._replace(count=jnp.asarray(2**24, jnp.int32))
  _, state = opt.update(jnp.ones(1), state)
  assert int(state.count) == 2**24 + 1


def test_beta_zero_keeps_no_buffer_and_passes_updates_through():
  opt = transforms.outer_momentum(beta=0.0)
  state = opt.init({'x': jnp.ones(3)})
  assert state.momentum is None
  updates, _ = opt.update({'x': jnp.arange(3.0)}, state)
  np.testing.assert_array_equal(updates['x'], [0.0, 1.0, 2.0])


@pytest.mark.usefixtures('x64')
def test_float64_end_to_end():
  opt = expectigrad.expectigrad(1e-3)
  x = jnp.ones(3, jnp.float64)
  updates, state = jax.jit(opt.update)(jnp.full(3, 0.5, jnp.float64), opt.init(x))
  assert updates.dtype == jnp.float64
  assert state[0].sum_of_squares.dtype == jnp.float64 and state[1].momentum.dtype == jnp.float64


def test_composes_with_optax_clipping():
  opt = optax.chain(optax.clip_by_global_norm(1.0), expectigrad.expectigrad(1e-3))
  params = _params()
  updates, _ = jax.jit(opt.update)(_grads(100.0), opt.init(params), params)
  # The first Expectigrad step is lr * sign(g) wherever g != 0, clipped or not.
  np.testing.assert_allclose(updates['b'], [-1e-3, 0.0], rtol=1e-5)


# --- Integer parameters and mismatched gradient shapes: clear errors, at trace time.

_PIECES = {
    'expectigrad': lambda: expectigrad.expectigrad(1e-3),
    'scale_by_arithmetic_rms': transforms.scale_by_arithmetic_rms,
    'scale_by_ema_rms': transforms.scale_by_ema_rms,
    'outer_momentum': transforms.outer_momentum,
    'outer_momentum(beta=0)': lambda: transforms.outer_momentum(beta=0.0),
    'inner_momentum(arithmetic_rms)': lambda: transforms.inner_momentum(transforms.arithmetic_rms()),
    'inner_momentum(ema_rms)': lambda: transforms.inner_momentum(transforms.ema_rms()),
    'adam ablation': lambda: optax.chain(transforms.inner_momentum(transforms.ema_rms(), 0.9),
                                         transforms.scale_by_lr(1e-3)),
}


@pytest.mark.parametrize('piece', list(_PIECES))
@pytest.mark.parametrize('dtype', [jnp.int32, jnp.int8, jnp.uint8, jnp.bool_])
def test_integer_parameters_are_rejected_naming_the_leaf(piece, dtype):
  params = {'w': jnp.ones((3, 2)), 'frozen': None,
            'layers': [{'b': jnp.zeros(2)}, {'b': jnp.zeros(2, dtype)}]}
  with pytest.raises(TypeError, match=r"parameter \['layers'\]\[1\]\['b'\] has dtype "
                                      rf"{jnp.dtype(dtype).name}: only floating-point parameters"):
    _PIECES[piece]().init(params)


@pytest.mark.usefixtures('x64')
def test_int64_parameters_are_rejected_and_float64_accepted():
  opt = expectigrad.expectigrad(1e-3)
  with pytest.raises(TypeError, match=r"parameter \['step'\] has dtype int64"):
    opt.init({'x': jnp.ones(2, jnp.float64), 'step': jnp.zeros((), jnp.int64)})
  with pytest.raises(TypeError, match=r'parameter \(the root of the tree\) has dtype int64'):
    jax.jit(opt.init)(jnp.arange(3))
  opt.init({'x': jnp.ones(2, jnp.float64), 'half': jnp.ones(2, jnp.float16)})


def test_float_parameters_of_every_width_are_accepted():
  params = {'a': jnp.ones(2, jnp.bfloat16), 'b': jnp.ones((2, 3), jnp.float16),
            'c': jnp.ones(()), 'd': None}
  for make in _PIECES.values():
    make().init(params)


_SHAPE_PARAMS = {'w': jnp.ones((3, 2)), 'v': jnp.ones((2, 16)), 'b': jnp.zeros(5), 'frozen': None}


def _wrong(name, shape):
  grads = jax.tree.map(jnp.ones_like, _SHAPE_PARAMS)
  grads[name] = jnp.ones(shape)
  return grads


@pytest.mark.parametrize('piece', list(_PIECES))
@pytest.mark.parametrize('name,shape',
                         [('b', (4,)), ('v', (16, 2)), ('w', (7,)), ('w', (2, 4)), ('v', (32,))])
@pytest.mark.parametrize('jit', [False, True], ids=['eager', 'jit'])
def test_wrong_gradient_shape_names_the_leaf_and_both_shapes(piece, name, shape, jit):
  opt = _PIECES[piece]()
  state = opt.init(_SHAPE_PARAMS)
  update = jax.jit(opt.update) if jit else opt.update
  expected = re.escape(str(_SHAPE_PARAMS[name].shape))
  got = re.escape(str(shape))
  message = rf"gradient \['{name}'\] has shape {got}, but the parameter has shape {expected}"
  with pytest.raises(ValueError, match=message):
    update(_wrong(name, shape), state, _SHAPE_PARAMS)
  if piece == 'outer_momentum(beta=0)':
    return  # no per-element state: only the parameters tell the shape
  # Without the parameters, the state tells.
  message = rf"gradient \['{name}'\] has shape {got}, but the optimizer state was initialized for"
  with pytest.raises(ValueError, match=message + ' a parameter of shape'):
    update(_wrong(name, shape), state)


def test_wrong_gradient_shape_raises_under_scan_and_vmap():
  opt = expectigrad.expectigrad(1e-2)
  params = {'w': jnp.ones((4, 3))}

  def run(grads):
    def body(state, g):
      return opt.update({'w': g}, state, params)[1], None
    return jax.lax.scan(body, opt.init(params), grads)[0]

  run(jnp.ones((5, 4, 3)))
  with pytest.raises(ValueError,
                     match=r"gradient \['w'\] has shape \(3, 4\), but the parameter has shape \(4, 3\)"):
    run(jnp.ones((5, 3, 4)))

  def problem(g):  # one independent problem per example: per-example shapes on both sides
    state = opt.init(params)
    return opt.update({'w': g}, state, params)[0]['w']

  assert jax.vmap(problem)(jnp.ones((8, 4, 3))).shape == (8, 4, 3)
  with pytest.raises(ValueError, match=r"gradient \['w'\] has shape \(4, 4\)"):
    jax.vmap(problem)(jnp.ones((8, 4, 4)))
  batched_state = jax.vmap(lambda _: opt.init(params))(jnp.arange(8))
  updates, _ = jax.vmap(lambda g, s: opt.update({'w': g}, s))(jnp.ones((8, 4, 3)), batched_state)
  assert updates['w'].shape == (8, 4, 3)
  with pytest.raises(ValueError, match=r"gradient \['w'\] has shape \(13,\), but the optimizer state"):
    jax.vmap(lambda g, s: opt.update({'w': g}, s))(jnp.ones((8, 13)), batched_state)


def test_none_leaves_pass_the_shape_checks_and_state_has_the_parameter_shape():
  opt = expectigrad.expectigrad(1e-2)
  params = {'w': jnp.ones((3, 2)), 'frozen': jnp.ones(4)}
  state = opt.init({'w': params['w'], 'frozen': None})
  assert state[0].sum_of_squares['w'].shape == (3, 2)
  updates, _ = jax.jit(opt.update)({'w': jnp.ones((3, 2)), 'frozen': None}, state,
                                   {'w': params['w'], 'frozen': None})
  assert updates['w'].shape == (3, 2) and updates['frozen'] is None
  updates, _ = opt.update({'w': jnp.ones((3, 2)), 'frozen': None}, state)
  assert updates['w'].shape == (3, 2)
