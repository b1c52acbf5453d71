"""Every code block of README.md and docs/*.md runs as written, or says why not.

A fenced ``python`` block runs as a program of its own (a fresh interpreter,
in an empty folder); a ``bash`` block runs in bash with this environment's
``bin`` folder first on PATH (so ``python`` and ``expectigrad`` are this
checkout's). A block that is not a complete program, or that must not run
here (it installs packages, or takes minutes), is preceded by a comment
saying so::

    <!-- fragment: part of the example above -->

Blocks in other languages (the update rule, the citation) are prose.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from typing import NamedTuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
CODE_LANGUAGES = {'python', 'bash'}
_FENCE = re.compile(r'^(?P<indent>[ ]*)```(?P<language>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ ]*$',
                    re.MULTILINE | re.DOTALL)
_FRAGMENT = re.compile(r'<!--\s*fragment:\s*(?P<reason>\S[^>]*?)\s*-->\s*$')


class Block(NamedTuple):
  page: pathlib.Path
  line: int
  language: str
  body: str
  fragment: str | None  # the reason it does not run, or None


def _blocks(page: pathlib.Path) -> list[Block]:
  text = page.read_text()
  blocks = []
  for match in _FENCE.finditer(text):
    before = text[:match.start()].rstrip('\n').splitlines()
    marker = _FRAGMENT.search(before[-1]) if before else None
    indent = len(match['indent'])
    body = '\n'.join(line[indent:] for line in match['body'].splitlines())
    blocks.append(Block(page, text.count('\n', 0, match.start()) + 1, match['language'], body,
                        marker['reason'] if marker else None))
  return blocks


_ALL = [block for page in PAGES for block in _blocks(page)]
_RUNNABLE = [b for b in _ALL if b.language in CODE_LANGUAGES and b.fragment is None]


def test_every_page_has_code_and_every_code_block_is_a_program_or_a_fragment():
  assert _RUNNABLE, 'no runnable block found: is the fence pattern right?'
  for block in _ALL:
    where = f'{block.page.name}:{block.line}'
    assert block.language in CODE_LANGUAGES | {'', 'text', 'bibtex'}, (
        f'{where}: a ```{block.language} block: use python or bash (run), or text (prose)')


@pytest.mark.parametrize('block', _RUNNABLE, ids=lambda b: f'{b.page.name}:{b.line}')
def test_code_block_runs_as_written(block, tmp_path):
  env = dict(os.environ, PATH=f'{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}',
             MPLBACKEND='Agg')
  command = [sys.executable, '-c', block.body] if block.language == 'python' else [
      'bash', '-euo', 'pipefail', '-c', block.body]
  result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, (
      f'{block.page.name}:{block.line} failed:\n{block.body}\n--- stdout\n{result.stdout[-3000:]}'
      f'\n--- stderr\n{result.stderr[-3000:]}')


def test_readme_keras_block_says_load_model_needs_the_module_imported():
  """Keras imports only its own packages while loading (tests/test_keras.py shows the failure)."""
  block = next(b for b in _blocks(ROOT / 'README.md') if 'tensorflow2.Expectigrad(' in b.body)
  assert 'keras.models.load_model(' in block.body
  assert 'keras.models.load_model needs `import expectigrad.tensorflow2` first' in block.body
