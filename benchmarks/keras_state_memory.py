"""Optimizer state bytes per parameter element and device, under Keras's distribution API.

For Keras on JAX with 8 host devices, each optimizer (Expectigrad against
Keras's Adam) is built for the same float32 model under each sharding, and
the bytes of its state held by one device (the addressable shards of all its
variables on that device, step counters included) are divided by the
parameter elements held there::

    python -m benchmarks.keras_state_memory

Expectigrad keeps three arrays per parameter (sum of squares, int32 nonzero
count, momentum: 12 bytes an element in float32), Adam two (8 bytes); a
sharding that splits the parameters over k devices must split the state
alike, leaving both numbers unchanged per device.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

DEVICES = 8
# One wide layer, and one whose kernel has fewer than 16 columns (state that
# Expectigrad's CPU layout ravels on one device).
WIDTHS = (512, 1024, 8)


def distributions(keras: Any) -> dict[str, Any]:
  """``{name: distribution}``: none, ``DataParallel`` over all devices, and ``ModelParallel``.

  ``ModelParallel`` uses a (2, devices/2) mesh of ``batch`` x ``model`` axes
  whose ``LayoutMap`` shards every kernel's columns and every bias over the
  model axis.
  """
  devices = keras.distribution.list_devices()
  mesh = keras.distribution.DeviceMesh((2, len(devices) // 2), ['batch', 'model'], devices)
  layout_map = keras.distribution.LayoutMap(mesh)
  layout_map['.*/kernel'] = (None, 'model')
  layout_map['.*/bias'] = ('model',)
  return {
      'one device': None,
      'DataParallel': keras.distribution.DataParallel(devices=devices),
      'ModelParallel': keras.distribution.ModelParallel(layout_map=layout_map,
                                                        batch_dim_name='batch'),
  }


def _on_device(variables: Sequence[Any], device: Any, attribute: str) -> int:
  """The sum of ``attribute`` (``nbytes`` or ``size``) of the variables' shards on ``device``."""
  return sum(getattr(shard.data, attribute)
             for variable in variables for shard in variable.value.addressable_shards
             if shard.device == device)


def state_bytes_per_element(model: Any, device: Any) -> float:
  """The optimizer state bytes on ``device`` per parameter element on ``device``.

  Args:
    model: a Keras model whose optimizer is built.
    device: a ``jax.Device``.

  Returns:
    Bytes of all the optimizer's variables held by ``device`` over the
    elements of the trainable variables held by it.
  """
  return (_on_device(model.optimizer.variables, device, 'nbytes')
          / _on_device(model.trainable_variables, device, 'size'))


def measure(make_optimizer: Callable[[], Any], distribution: Any,
            widths: Sequence[int] = WIDTHS) -> float:
  """:func:`state_bytes_per_element` on the first device, for an MLP built under ``distribution``.

  Args:
    make_optimizer: returns a fresh Keras optimizer.
    distribution: a ``keras.distribution.Distribution``, or None for one device.
    widths: the MLP's input width, then each Dense layer's units.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import keras  # pylint: disable=import-outside-toplevel

  def build():
    model = keras.Sequential([keras.Input((widths[0],))]
                             + [keras.layers.Dense(units) for units in widths[1:]])
    model.compile(optimizer=make_optimizer(), loss='mse')
    model.optimizer.build(model.trainable_variables)
    return model

  if distribution is None:
    return state_bytes_per_element(build(), jax.devices()[0])
  with distribution.scope():
    return state_bytes_per_element(build(), jax.devices()[0])


def main() -> None:
  """Prints the table, in a process configured for ``DEVICES`` host devices on Keras's JAX backend."""
  os.environ.setdefault('KERAS_BACKEND', 'jax')
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + f' --xla_force_host_platform_device_count={DEVICES}')
  import keras  # pylint: disable=import-outside-toplevel
  from expectigrad.tensorflow2 import Expectigrad  # pylint: disable=import-outside-toplevel

  print('| sharding (8 CPU devices) | Expectigrad | Adam |')
  print('|---|---|---|')
  for name, distribution in distributions(keras).items():
    expectigrad, adam = (measure(make, distribution)
                         for make in (Expectigrad, keras.optimizers.Adam))
    print(f'| {name} | {expectigrad:.4f} | {adam:.4f} |')


if __name__ == '__main__':
  main()
