"""Run in a subprocess with 8 host devices (see test_jax_sharding.py); asserts and exits 0.

XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before JAX
starts, which is why this is a script and not a test in the main process.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import expectigrad

SPECS = {'w': P('x', 'y'), 'b': P('y'), 'c': P(None, 'x'), 'r': P()}


def make_params():
  key = jax.random.key(0)
  return {'w': jax.random.normal(key, (8, 8)), 'b': jnp.linspace(-1, 1, 4),
          'c': jnp.ones((3, 8)), 'r': jnp.asarray(2.0)}


def gradients(params, t):
  # Zero gradients on some elements and steps exercise the sparse counter.
  return jax.tree.map(lambda p: jnp.where(jnp.abs(p) > 0.5 * (t % 3), jnp.sin(p * t), 0.0), params)


def train(params, steps=20, layout=lambda opt: opt):
  opt = layout(optax.chain(optax.clip_by_global_norm(5.0), expectigrad.expectigrad(0.05)))
  state = jax.jit(opt.init)(params)
  initial = state

  @jax.jit
  def step(params, state, t):
    updates, state = opt.update(gradients(params, t), state, params)
    return optax.apply_updates(params, updates), state

  for t in range(steps):
    params, state = step(params, state, t)
  return params, initial, state


def spec_of(leaf):
  return leaf.sharding.spec


def state_leaves_by_param(state):
  """(param name, leaf) for every per-parameter buffer of the Expectigrad state."""
  rms, momentum = state[1][0], state[1][1]
  for tree in (rms.sum_of_squares, rms.nonzero_count, momentum.momentum):
    yield from tree.items()


def main():
  assert jax.device_count() == 8, jax.devices()
  expected, _, _ = train(make_params())  # one device, no sharding
  # The CPU layout wrapper ravels the small leaves' state only where nothing is sharded.
  _, _, unsharded = train(make_params(), layout=expectigrad.layout.ravel_short_minor_dims)
  assert dict(state_leaves_by_param(unsharded))['c'].shape == (24,)
  for axis_type, layout in [(AxisType.Explicit, lambda opt: opt), (AxisType.Auto, lambda opt: opt),
                            (AxisType.Explicit, expectigrad.layout.ravel_short_minor_dims)]:
    mesh = jax.make_mesh((4, 2), ('x', 'y'), axis_types=(axis_type,) * 2)
    with jax.set_mesh(mesh):
      params = {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in make_params().items()}
      result, initial, final = train(params, layout=layout)
    checked = [final] if axis_type == AxisType.Auto else [initial, final]
    for state in checked:
      for name, leaf in state_leaves_by_param(state):
        assert spec_of(leaf) == SPECS[name], (axis_type, name, spec_of(leaf), SPECS[name])
    for name in SPECS:
      assert spec_of(result[name]) == SPECS[name]
      np.testing.assert_allclose(np.asarray(result[name]), np.asarray(expected[name]), rtol=1e-5, atol=1e-6)
    print(f'{axis_type}: state sharded like the parameters; results equal the unsharded run')


if __name__ == '__main__':
  main()
