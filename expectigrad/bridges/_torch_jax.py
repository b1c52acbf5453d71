"""The JAX executor: a chain's update run by XLA, its state in JAX-owned arrays.

On a CPU, XLA compiles an optax update into a few vectorised loops per
parameter, which run faster than torch's eager kernels (one pass per
primitive) and need no ``torch.compile``. This module runs a cohort of
torch parameters (those stepped together) that way:

- The update the lowering traced over the cohort's parameters
  (``LoweredChain.traced``) is jitted once; an elementwise chain's is
  traced again over the parameters raveled, since XLA:CPU's loops over
  4-D arrays ran 4x slower than over vectors (ResNet-18's 62 tensors:
  41.6 against 10.5 ms). The gradients and parameters enter where they
  are, zero-copy through dlpack, tensor by tensor.
- The state lives in JAX-owned arrays, one per state leaf, and
  ``optimizer.state[p]`` holds torch views of them (``torch.from_dlpack``,
  zero-copy), shaped like ``p``. Before each call the views are taken out
  of ``optimizer.state`` so that XLA may update the arrays in place (JAX
  never donates a buffer that a live dlpack export references); new views
  are put back after it.
- Where every update is a scalar times a new state leaf
  (:mod:`._scaled_update`: Expectigrad, SGD with momentum, ...), XLA
  returns only the scalars and torch adds ``scale * leaf`` to the
  parameters, in place: the step keeps nothing beyond the state. Otherwise
  XLA writes the updates into the previous step's update arrays (donated),
  which are then added: one array per parameter beyond the state, without
  which each step allocated fresh ones (on the 2-core CPU machine that
  doubled the step, W1 35-41 -> 72-77 ms: page faults on 64 MB).

If ``optimizer.state[p]`` no longer holds the views this module put there
(``load_state_dict``, a user's assignment), the state is re-imported from
it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import torch

from expectigrad import jax2torch
from expectigrad.bridges import _conventions, _scaled_update, _torch_chain, _torch_flat
from expectigrad.bridges._conventions import StateLeaf

def _raveled(chain: _torch_chain.LoweredChain) -> tuple[Any, list[StateLeaf]] | None:
  """An elementwise chain's update traced over its parameters raveled, and its state leaves.

  None where the state is not the tree's, raveled (a leaf of another name,
  owner, dtype or size).
  """
  specs = [jax.ShapeDtypeStruct((math.prod(v.aval.shape),), v.aval.dtype)
           for v in chain.traced.jaxpr.invars[-chain.n_params:]]
  raveled = _conventions.Chain(chain.chain.transform, chain.chain.keys, specs, chain.hyper_names)
  with raveled.x64():
    hyper = {k: jax.ShapeDtypeStruct((), _torch_chain.jax_dtype(chain.hyper_dtype))
             for k in chain.hyper_names}
    traced = jax.make_jaxpr(raveled.update_tree)(hyper, specs, raveled.state_shape, specs)
  leaves = raveled.state_leaves('.', short=False, dtype=jax2torch.torch_dtype)
  key = lambda leaf: (leaf.name, leaf.owner, leaf.dtype, math.prod(leaf.shape))  # noqa: E731
  return (traced, leaves) if list(map(key, leaves)) == list(map(key, chain.state)) else None


class JaxChain:
  """A lowered chain's traced update, jitted for the JAX executor.

  Args:
    chain: the lowered chain (:class:`._torch_chain.LoweredChain`).

  Attributes:
    raveled: whether the program takes and keeps the parameters' arrays raveled.
    leaves: the state's leaves as the program keeps them.
    scaled: per parameter, its update as a scalar times a state leaf
      (:class:`._scaled_update.Scaled`); None where the program returns the
      updates themselves.
  """

  def __init__(self, chain: _torch_chain.LoweredChain):
    self.chain = chain
    raveled = _raveled(chain) if _torch_flat.is_elementwise(chain.traced) else None
    self.raveled = raveled is not None
    traced, self.leaves = raveled or (chain.traced, chain.state)
    n = chain.n_params
    self.scaled = _scaled_update.find(traced, n)
    self._hyper_dtype = _torch_chain.jax_dtype(chain.hyper_dtype)
    self._updates = [v.aval for v in traced.jaxpr.outvars[:n]]
    if self.scaled is None:
      run = jax_core.jaxpr_as_fun(traced)

      def update(hyper, grads, state, params, spare):
        del spare  # donated: XLA writes the updates into its buffers
        outputs = run(*hyper, *grads, *state, *params)
        # JAX gives each output the first unused donated buffer of its shape,
        # in order: the new state first, so that each leaf takes its own old
        # buffer and the updates the spare ones (updates first made XLA copy
        # 124 of Adam's 187 arrays on ResNet-18's shapes: 21 against 12 ms).
        return outputs[n:], outputs[:n]

      # keep_unused: else jit drops ``spare``, and its buffers with it.
      self._run = jax.jit(update, donate_argnums=(2, 4), keep_unused=True)
    else:
      scales_and_state = _scaled_update.program(traced, self.scaled)
      self._run = jax.jit(
          lambda hyper, grads, state, params: scales_and_state(*hyper, *grads, *state, *params),
          donate_argnums=(2,))

  def hyper(self, traced: dict[str, Any]) -> list[jax.Array]:
    """Hyperparameters as JAX scalars (a tensor's value is read: this runs on CPU only)."""
    return [jnp.asarray(float(traced[k]), self._hyper_dtype) for k in self.chain.hyper_names]

  def to_jax(self, tensors: Sequence[torch.Tensor]) -> list[jax.Array]:
    """Per-parameter tensors (gradients, parameters) as the program takes them."""
    return [_torch_chain.to_jax(t.reshape(-1) if self.raveled else t) for t in tensors]

  def spare(self) -> list[jax.Array]:
    """Arrays for the updates to be written into (where :attr:`scaled` is None)."""
    return [jnp.empty(a.shape, a.dtype) for a in self._updates]

  def state_from_torch(self, params: Sequence[torch.Tensor], state: dict) -> list[jax.Array]:
    """JAX-owned state leaves built from ``optimizer.state`` (copies)."""
    arrays = []
    for leaf in self.leaves:
      value = state[params[0 if leaf.owner is None else leaf.owner]][leaf.name]
      # A JAX-owned copy: XLA never donates a buffer imported from torch.
      arrays.append(jnp.array(_torch_chain.to_jax(value.reshape(leaf.shape)), copy=True))
    return arrays

  def run(self, hyper: list, grads: list, state: list, params: list, spare: list | None
          ) -> tuple[Any, list]:
    """One jitted update: ``(scales, state)`` if :attr:`scaled`, else ``(updates, state)``.

    Args:
      hyper: from :meth:`hyper`.
      grads, params: JAX arrays, one per parameter.
      state: the state leaves (donated).
      spare: last step's updates (donated), where the program returns updates.
    """
    with warnings.catch_warnings():
      # A state tensor the user still holds cannot be donated; XLA then copies.
      warnings.filterwarnings('ignore', message='Some donated buffers were not usable')
      if self.scaled is None:
        new_state, updates = self._run(hyper, grads, state, params, spare)
        return updates, new_state
      return self._run(hyper, grads, state, params)


class Cohort:
  """The JAX state of parameters that step together, and the views handed out.

  Args:
    chain: the :class:`JaxChain` of these parameters.
    params: the parameters, in order (the keys of their state).
  """

  def __init__(self, chain: JaxChain, params: Sequence[torch.Tensor]):
    self.chain = chain
    self.params = list(params)
    self.state: list[jax.Array] | None = None
    self._views: list[dict[str, torch.Tensor]] = []
    self._spare: list[jax.Array] | None = None

  def step(self, state: dict, arrays: Sequence[torch.Tensor], traced: dict[str, Any],
           grads: Sequence[torch.Tensor]) -> None:
    """One update of the cohort's parameters and of ``state`` (``optimizer.state``).

    Args:
      state: ``optimizer.state``.
      arrays: the parameters as the chain sees them (real views of complex ones).
      traced: the traced hyperparameters (names -> values).
      grads: the gradients, as ``arrays`` are seen.
    """
    with _torch_chain.x64_scope(arrays[0].dtype):
      self._step(state, list(arrays), traced, grads)

  def _step(self, state: dict, arrays: list[torch.Tensor], traced: dict[str, Any],
            grads: Sequence[torch.Tensor]) -> None:
    params = self.params
    intact = self.state is not None and all(
        state[p].get(name) is tensor for p, view in zip(params, self._views)
        for name, tensor in view.items())
    if not intact:
      self.state = self.chain.state_from_torch(params, state)
    # Drop every view of the state before the call, so XLA may reuse it.
    self._views = []
    for p in params:
      state[p].clear()
    jax_grads = self.chain.to_jax(grads)
    # A chain that does not read the parameters gets the gradients in their
    # place (it may still require arrays: optax.add_decayed_weights(0.0)).
    jax_params = self.chain.to_jax(arrays) if self.chain.chain.reads_params else jax_grads
    if self.chain.scaled is None and self._spare is None:
      self._spare = self.chain.spare()
    result, self.state = self.chain.run(self.chain.hyper(traced), jax_grads, self.state,
                                        jax_params, self._spare)
    self._spare = None
    jax.block_until_ready((result, self.state))
    leaves = [torch.from_dlpack(a) for a in self.state]
    self._views = self._hand_out(state, arrays, leaves)
    if self.chain.scaled is None:
      updates = [torch.from_dlpack(u).view(a.shape) for u, a in zip(result, arrays)]
      torch._foreach_add_(arrays, updates)
      del updates  # no torch view may outlive this step: the arrays are donated next
      self._spare = result
      return
    # One call per distinct scale (one for Expectigrad: every parameter's is -lr / (1 - beta^t)).
    groups: dict[float, tuple[list, list]] = {}
    for a, scaled, scale in zip(arrays, self.chain.scaled,
                                np.asarray(result).astype(np.float64).tolist()):
      group = groups.setdefault(scale, ([], []))
      group[0].append(a)
      group[1].append(leaves[scaled.leaf].view(a.shape))
    for scale, (group_arrays, group_leaves) in groups.items():
      torch._foreach_add_(group_arrays, group_leaves, alpha=scale)

  def _hand_out(self, state: dict, arrays: Sequence[torch.Tensor],
                leaves: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Puts views of the state leaves in ``state[p]``, shaped as torch keeps them; returns them."""
    views: list[dict[str, torch.Tensor]] = [{} for _ in self.params]
    for leaf, tensor in zip(self.chain.leaves, leaves):
      if leaf.owner is None:  # one tensor, held by every parameter (as the torch path does)
        for view in views:
          view[leaf.name] = tensor
      else:
        array = arrays[leaf.owner]
        views[leaf.owner][leaf.name] = tensor.view(_torch_chain.storage_shape(leaf, array))
    for p, view in zip(self.params, views):
      state[p].update(view)
    return views
