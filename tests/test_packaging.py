"""Import hygiene and the contract between README.md and .ci/run."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run_python(code: str) -> str:
  return subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True,
                        cwd=ROOT).stdout.strip()


def test_import_expectigrad_loads_neither_torch_nor_tensorflow():
  out = _run_python('import sys, expectigrad; expectigrad.expectigrad(); '
                    'print(sorted(m for m in ("torch", "tensorflow", "keras") if m in sys.modules))')
  assert out == '[]'


def test_unknown_attribute_is_an_attribute_error():
  import expectigrad
  with pytest.raises(AttributeError, match='no attribute'):
    expectigrad.not_a_module  # noqa: B018


def test_ci_runs_exactly_the_readme_test_command():
  readme = (ROOT / 'README.md').read_text()
  match = re.search(r'Run the tests:\n(?:<!--.*-->\n)?```bash\n(.+)\n```', readme)
  assert match, 'README.md must give the test command under "Run the tests:"'
  ci_lines = (ROOT / '.ci' / 'run').read_text().splitlines()
  assert match.group(1) in ci_lines


@pytest.mark.parametrize('module,name,signature', [
    ('expectigrad.pytorch', 'Expectigrad',
     '(params, lr=0.001, beta=0.9, eps=1e-08, sparse_counter=True, *, maximize=False)'),
    ('expectigrad.tensorflow1', 'ExpectigradOptimizer',
     "(learning_rate=0.001, beta=0.9, epsilon=1e-08, sparse_counter=True, use_locking=False, "
     "name='Expectigrad')"),
    ('expectigrad.tensorflow2', 'Expectigrad',
     "(learning_rate=0.001, beta=0.9, epsilon=1e-08, sparse_counter=True, name=None, "
     "**kwargs)"),
])
def test_published_signatures_are_the_contract(module, name, signature):
  import importlib
  import inspect
  cls = getattr(importlib.import_module(module), name)
  # Annotations are free to change; names, order, kinds and defaults are the contract.
  parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
  bare = [p.replace(annotation=inspect.Parameter.empty) for p in parameters]
  assert str(inspect.Signature(bare)) == signature


@pytest.mark.parametrize('framework,module,name', [
    ('jax', 'expectigrad.alias', 'expectigrad'),
    ('torch', 'expectigrad.pytorch', 'Expectigrad'),
    ('tf1', 'expectigrad.tensorflow1', 'ExpectigradOptimizer'),
    ('keras', 'expectigrad.tensorflow2', 'Expectigrad'),
])
def test_published_names_and_defaults_come_from_the_hyperparameters_table(framework, module, name):
  """Each published API takes the table's hyperparameters, in its order, with its defaults."""
  import importlib
  import inspect
  from expectigrad import hyperparameters
  published = getattr(importlib.import_module(module), name)
  parameters = inspect.signature(published).parameters  # a class: without self
  expected = [(h.name_in(framework), h.default) for h in hyperparameters.HYPERPARAMETERS]
  names = [n for n in parameters if n in dict(expected)]
  assert [(n, parameters[n].default) for n in names] == expected
