"""Expectigrad in JAX: fit a small linear regression, next to Adam.

Run: python examples/quickstart.py
"""

import jax
import jax.numpy as jnp
import optax

import expectigrad


def main(steps: int = 300) -> None:
  kx, kw, kn = jax.random.split(jax.random.key(0), 3)
  features = jax.random.normal(kx, (256, 8))
  true_w = jax.random.normal(kw, (8,))
  targets = features @ true_w + 0.01 * jax.random.normal(kn, (256,))

  def loss(w):
    return jnp.mean((features @ w - targets) ** 2)

  optimizers = {
      'expectigrad': optax.chain(optax.clip_by_global_norm(10.0), expectigrad.expectigrad(0.05)),
      'adam': optax.adam(0.05),
  }
  for name, opt in optimizers.items():

    @jax.jit
    def step(w, state, opt=opt):
      value, grads = jax.value_and_grad(loss)(w)
      updates, state = opt.update(grads, state, w)
      return optax.apply_updates(w, updates), state, value

    w = jnp.zeros(8)
    state = opt.init(w)
    for t in range(steps):
      w, state, value = step(w, state)
      if t % 100 == 0:
        print(f'{name:12s} step {t:4d}  loss {float(value):.6f}')
    print(f'{name:12s} final      loss {float(loss(w)):.6f}\n')


if __name__ == '__main__':
  main()
