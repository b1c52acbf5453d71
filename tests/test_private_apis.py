"""Every private framework API a bridge uses still exists, with the parameters it is called with.

Each framework's private APIs are used from one module (see
:mod:`expectigrad.bridges._private`), whose ``APIS`` table names each with the
version it was checked against. A new release that removes or re-signs one
fails here, one test per API, naming it.
"""

import importlib

import pytest

from expectigrad.bridges import _private


def _apis(module: str, framework: str) -> list:
  """``module``'s APIS as pytest params (skipped where ``framework`` is not installed)."""
  try:
    importlib.import_module(framework)
  except ImportError:
    return [pytest.param(None, marks=pytest.mark.skip(reason=f'{framework} is not installed'))]
  apis = importlib.import_module(module).APIS
  return [pytest.param(api, id=api.name) for api in apis]


def _check(api: _private.PrivateApi) -> None:
  try:
    problem = _private.problem(api)
  except AttributeError as error:
    pytest.fail(f'{api.name} (checked against {api.checked}) is gone: {error}')
  assert problem is None, problem


@pytest.mark.parametrize('api', _apis('expectigrad.bridges._private_tf', 'tensorflow'))
def test_tensorflow_private_api(api):
  _check(api)


@pytest.mark.parametrize('api', _apis('expectigrad.bridges._private_keras', 'keras'))
def test_keras_private_api(api):
  _check(api)


# -- torch ----------------------------------------------------------------------------------
# torch's private APIs (make_fx, torch._inductor.compile, Dynamo's ``_init_group``, ...) are in
# ``expectigrad/_private_torch.py``, checked by behaviour in ``tests/test_private_torch_apis.py``.
# Entries for an ``APIS`` table of theirs go here:
#
#   @pytest.mark.parametrize('api', _apis('expectigrad._private_torch', 'torch'))
#   def test_torch_private_api(api):
#     _check(api)


def test_a_changed_api_fails_naming_it_and_its_version():
  renamed = _private.PrivateApi('framework.Thing.method', 'framework 1.0',
                                lambda: (lambda self, new_name: None), ('self', 'old_name'))
  message = _private.problem(renamed)
  assert 'framework.Thing.method' in message and 'framework 1.0' in message
