"""How the bridges record the private framework APIs they use.

Each framework's private APIs are used from one module (``_private_tf``,
``_private_keras``; torch's are ``expectigrad._private_torch``, which the
jaxpr -> torch compiler uses too), whose docstring lists them with the
version each was checked against. For TF and Keras an :data:`APIS` table is
checked by ``tests/test_private_apis.py`` against the installed version, for
torch ``tests/test_private_torch_apis.py`` runs each API: a release that
renames or re-signs one fails there, naming it, rather than somewhere
inside a training step.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple


class PrivateApi(NamedTuple):
  """One private API a bridge uses.

  Attributes:
    name: its dotted name (``'tf.compat.v1.train.Optimizer._get_or_make_slot'``).
    checked: the framework version it was checked against (``'tensorflow 2.21.0'``).
    find: returns it from the installed framework (raises AttributeError if gone).
    parameters: the parameter names of a callable, ``self`` included; None
      for an attribute.
  """

  name: str
  checked: str
  find: Callable[[], Any]
  parameters: tuple[str, ...] | None = None


def problem(api: PrivateApi) -> str | None:
  """What is wrong with ``api`` in the installed framework, in words; None if nothing.

  Args:
    api: the API as the bridge uses it.

  Returns:
    None, or a message naming the API, the version it was checked against
    and what changed.
  """
  found = api.find()
  if api.parameters is None:
    return None
  names = tuple(inspect.signature(found).parameters)
  if names != api.parameters:
    return (f'{api.name} (checked against {api.checked}) now takes {names}, '
            f'the bridge calls it with {api.parameters}.')
  return None
