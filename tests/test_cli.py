"""The ``expectigrad`` command line, end to end with tiny sizes (run in-process for speed)."""

import importlib.util
import pathlib
import socket
import subprocess
import sys
import types

import numpy as np
import pytest

from expectigrad.cli import bench, demo, reddi
from expectigrad.cli import frameworks as frameworks_lib
from expectigrad.cli.main import build_parser, main
from expectigrad.cli.task import BATCH_SIZE, make_task

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def read_table(path: pathlib.Path) -> list[list[str]]:
  """The body rows of the Markdown table in ``path``, cells stripped."""
  lines = [line for line in path.read_text().splitlines() if line.startswith('|')]
  return [[cell.strip() for cell in line.strip('|').split('|')] for line in lines[2:]]


def numpy_loss(params, x, y) -> float:
  """Mean softmax cross-entropy of the MLP, written independently of the trainers."""
  w1, b1, w2, b2 = (p.astype(np.float64) for p in params)
  logits = np.maximum(x @ w1 + b1, 0.0) @ w2 + b2
  logits -= logits.max(axis=1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  return float(-log_probs[np.arange(len(y)), y].mean())


def test_demo_trains_every_optimizer_and_writes_table_and_plot(tmp_path, capsys):
  assert main(['demo', '--steps', '150', '--out', str(tmp_path), '--no-progress']) == 0
  assert (tmp_path / 'demo-digits.png').read_bytes().startswith(PNG_MAGIC)
  rows = read_table(tmp_path / 'demo-digits.md')
  assert [row[:2] for row in rows] == [['jax', name] for name in frameworks_lib.OPTIMIZERS]
  for _, _, loss, accuracy, wall in rows:
    assert float(loss) < 0.5 and float(accuracy) > 0.85 and float(wall) > 0
  assert 'test accuracy' in capsys.readouterr().out


def test_curves_start_at_the_initial_loss_and_decrease(tmp_path):
  task = make_task('digits', 100)
  initial = numpy_loss(task.init_params, task.x_train, task.y_train)
  module = frameworks_lib.load('jax')
  for optimizer in frameworks_lib.OPTIMIZERS:
    result = demo.train(module, 'jax', optimizer, task, advance=lambda: None)
    assert result.eval_steps == task.eval_steps
    np.testing.assert_allclose(result.train_loss[0], initial, rtol=1e-5)
    assert result.train_loss[-1] < 0.5 * initial, optimizer


def test_task_batches_are_shuffled_epochs_and_reproducible():
  task = make_task('digits', 60, seed=3)
  per_epoch = len(task.y_train) // BATCH_SIZE
  epoch = task.batches[:per_epoch].ravel()
  assert len(set(epoch.tolist())) == len(epoch)   # no sample twice within an epoch
  assert task.eval_steps[0] == 0 and task.eval_steps[-1] == 60
  np.testing.assert_allclose(task.x_train.mean(axis=0), 0.0, atol=1e-5)
  again = make_task('digits', 60, seed=3)
  np.testing.assert_array_equal(task.batches, again.batches)
  np.testing.assert_array_equal(task.init_params[0], again.init_params[0])


def test_mnist1d_is_generated_without_network(monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError('the demo must not use the network')
  monkeypatch.setattr(socket.socket, 'connect', no_network)
  task = make_task('mnist1d', 5)
  assert task.x_train.shape == (4000, 40) and task.x_test.shape == (1000, 40)
  assert set(np.unique(task.y_train).tolist()) == set(range(10))


def test_reddi_command_sends_adam_to_the_worst_point(tmp_path, capsys):
  assert main(['reddi', '--out', str(tmp_path)]) == 0
  # The output and the help say which Adam fails: the hyperparameters it runs with.
  setting = f'b1={reddi.ADAM_B1:g}, b2={reddi.ADAM_B2:g}'
  assert setting == 'b1=0, b2=0.1' and setting in capsys.readouterr().out
  assert setting in ' '.join(build_parser()[1]['reddi'].format_help().split())
  assert (tmp_path / 'reddi.png').read_bytes().startswith(PNG_MAGIC)
  final = {name: float(x) for name, x in read_table(tmp_path / 'reddi.md')}
  np.testing.assert_allclose([final['adam'], final['expectigrad']], [1.0, -1.0], atol=1e-2)


@pytest.mark.parametrize('argv, complaint', [
    ([], 'required'),
    (['fly'], 'invalid choice'),
    (['demo', '--steps', '0'], '--steps'),
    (['demo', '--steps', 'ten'], '--steps'),
    (['demo', '--framework', 'mxnet'], '--framework'),
    (['demo', '--dataset', 'cifar10'], '--dataset'),
    (['demo', '--colour'], 'unrecognized arguments'),
    (['reddi', '--steps', '-3'], '--steps'),
    (['bench', '--size', 'W9'], '--size'),
    (['bench', '--rounds', '0'], '--rounds'),
    (['bench', '--framework', 'jax2'], '--framework'),
    (['--bogus'], 'unrecognized arguments: --bogus'),
    (['--bogus', 'demo'], 'unrecognized arguments: --bogus'),
])
def test_bad_flags_exit_2_with_a_message(argv, complaint, capsys):
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  assert complaint in capsys.readouterr().err


@pytest.mark.parametrize('argv, flag, accepted', [
    (['demo', '--seed', '-1'], '--seed', '0 to 4294967295'),
    (['demo', '--seed', 'abc'], '--seed', '0 to 4294967295'),
    (['demo', '--seed', '4294967296'], '--seed', '0 to 4294967295'),
    (['demo', '--seed', '1.5'], '--seed', '0 to 4294967295'),
    (['demo', '--steps', '0'], '--steps', '>= 1'),
    (['demo', '--steps', '-5'], '--steps', '>= 1'),
    (['reddi', '--steps', '0'], '--steps', '>= 1'),
    (['reddi', '--steps', 'many'], '--steps', '>= 1'),
    (['bench', '--rounds', '0'], '--rounds', '>= 1'),
    (['bench', '--rounds', '2.5'], '--rounds', '>= 1'),
    # Huge counts: each bound gives its reason, before any work (no overflow, allocation or hours).
    (['reddi', '--steps', '3000000000'], '--steps', '<= 10000000 (x is kept for every round'),
    (['reddi', '--steps', '99999999999999999999'], '--steps', '<= 10000000 ('),
    (['reddi', '--steps', '2147483647'], '--steps', '<= 10000000 ('),
    (['demo', '--steps', '99999999999999999999'], '--steps', "<= 100000 (every step's batch"),
    (['demo', '--steps', '3000000000'], '--steps', '<= 100000 ('),
    (['bench', '--rounds', '1000000'], '--rounds', '<= 1000 (each round times'),
])
def test_bad_values_are_one_error_line_naming_the_flag_and_range(argv, flag, accepted, capsys):
  """argparse rejects them before any work: usage, then one line, status 2, no traceback."""
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  last = err.rstrip('\n').splitlines()[-1]
  assert last.startswith(f'expectigrad {argv[0]}: error: argument {flag}: '), last
  assert accepted in last and repr(argv[-1]) in last
  assert err.startswith('usage: ') and 'Traceback' not in err


@pytest.mark.parametrize('argv', [['demo', '--steps', '100000'], ['reddi', '--steps', '10000000'],
                                  ['bench', '--rounds', '1000']])
def test_count_bounds_are_accepted(argv):
  parser, _ = build_parser()
  assert vars(parser.parse_args(argv))[argv[1].lstrip('-')] == int(argv[2])


@pytest.mark.parametrize('seed', ['0', '4294967295'])
def test_seed_bounds_are_accepted(seed):
  parser, _ = build_parser()
  assert parser.parse_args(['demo', '--seed', seed]).seed == int(seed)


def error_line(capsys) -> str:
  """stderr, checked to be exactly one line with no traceback."""
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
  return err.strip()


def test_output_path_that_is_a_file_is_reported(tmp_path, capsys):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  assert main(['reddi', '--out', str(blocker / 'sub')]) == 2
  assert error_line(capsys).startswith('expectigrad reddi: error: --out ')


@pytest.fixture
def unwritable_dir(tmp_path):
  """An existing folder no file can be created in (read-only, or /sys where root ignores modes)."""
  folder = tmp_path / 'read-only'
  folder.mkdir()
  folder.chmod(0o555)
  for candidate in (folder, pathlib.Path('/sys')):
    try:
      (candidate / 'probe').touch()
      (candidate / 'probe').unlink()
    except OSError:
      yield candidate
      break
  else:
    pytest.skip('no unwritable folder here')
  folder.chmod(0o755)


def _must_not_run(*args, **kwargs):
  raise AssertionError('the experiment ran before the output folder was checked')


@pytest.mark.parametrize('argv, target', [
    (['reddi'], 'expectigrad.cli.reddi.trajectory'),
    (['demo', '--steps', '1'], 'expectigrad.cli.main.run_demo'),
    (['reproduce', '--only', 'reddi-sweep'], 'expectigrad.cli.reproduce.run_reproduce'),
])
def test_unwritable_output_folder_is_one_error_line_before_any_work(argv, target, unwritable_dir,
                                                                     monkeypatch, capsys):
  monkeypatch.setattr(target, _must_not_run)
  assert main([*argv, '--out', str(unwritable_dir)]) == 2
  assert error_line(capsys).startswith(f'expectigrad {argv[0]}: error: --out ')


def test_top_level_help_describes_every_command():
  parser, commands = build_parser()
  assert 'demos and benchmarks' not in parser.description
  for phrase in ("reproduce the paper's claims", 'demo', "Reddi et al.'s problem", 'time the optimizer'):
    assert phrase in parser.description
  assert set(commands) == {'demo', 'reddi', 'bench', 'reproduce'}
  assert all(name in parser.format_help() for name in commands)


def block_import(monkeypatch, framework, module):
  """Makes ``import <module>`` fail as if it were not installed, for ``framework``'s trainer."""
  monkeypatch.setitem(sys.modules, module, None)   # import raises ModuleNotFoundError(name=module)
  monkeypatch.delitem(sys.modules, frameworks_lib._MODULES[framework], raising=False)


@pytest.mark.parametrize('framework, module, extra', [
    ('torch', 'torch', 'torch'),
    ('keras', 'keras', 'tensorflow'),
])
def test_missing_framework_names_the_extra_and_exits_2(framework, module, extra, tmp_path, monkeypatch,
                                                       capsys):
  block_import(monkeypatch, framework, module)
  assert main(['demo', '--framework', framework, '--out', str(tmp_path)]) == 2
  line = error_line(capsys)
  assert line.startswith(f'expectigrad demo: error: {module} is not installed: ')
  assert f'pip install ".[{extra}]"' in line and f'"expectigrad[{extra}]"' in line
  assert not list(tmp_path.iterdir())   # reported before any training


def test_framework_all_skips_missing_ones_naming_the_extra(monkeypatch, capsys):
  block_import(monkeypatch, 'torch', 'torch')
  monkeypatch.setattr(frameworks_lib, 'FRAMEWORKS', ('jax', 'torch'))
  assert set(demo.load_frameworks('all')) == {'jax'}
  line = error_line(capsys)
  assert line.startswith('note: skipping torch: torch is not installed') and '".[torch]"' in line


def test_broken_bridge_is_reported_with_its_cause(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(frameworks_lib._MODULES, 'torch', 'expectigrad.cli.frameworks.not_installed')
  assert main(['demo', '--framework', 'torch', '--out', str(tmp_path)]) == 2
  assert 'torch demo is unavailable' in error_line(capsys)


def test_missing_demo_extra_names_it(tmp_path, monkeypatch, capsys):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *args: None if name == 'matplotlib' else real_find_spec(name, *args))
  assert main(['reddi', '--out', str(tmp_path)]) == 2
  line = error_line(capsys)
  assert line.startswith('expectigrad reddi: error: matplotlib') and '".[demo]"' in line


@pytest.mark.parametrize('flag, value', [('--steps', 'x'), ('--seed', '-1')])
def test_python_dash_m_runs_without_traceback(flag, value):
  result = subprocess.run([sys.executable, '-m', 'expectigrad', 'demo', flag, value],
                          capture_output=True, text=True, cwd=ROOT, check=False)
  assert result.returncode == 2
  assert result.stderr.splitlines()[-1].startswith(f'expectigrad demo: error: argument {flag}: ')
  assert 'Traceback' not in result.stderr


def fake_bench_module(common, framework, medians):
  """A stand-in benchmark script: fixed medians, a lower bound at 50 GB/s."""
  def run(workloads=('W1', 'W2'), rounds=5):
    rows = []
    for workload in workloads:
      rows += common.make_rows(framework, workload, medians, common.lower_bound_ms(workload, 50.0), 'adam')
    return rows
  return types.SimpleNamespace(run=run)


def test_bench_merges_tables_and_skips_missing_frameworks(monkeypatch, capsys):
  common = bench.import_benchmarks()
  monkeypatch.setitem(sys.modules, 'benchmarks.bench_jax',
                      fake_bench_module(common, 'jax', {'expectigrad': 30.0, 'adam': 20.0}))
  monkeypatch.setitem(sys.modules, 'benchmarks.bench_torch', None)   # import fails
  monkeypatch.setitem(sys.modules, 'benchmarks.bench_tf', None)
  assert main(['bench', '--size', 'W2', '--rounds', '1']) == 0
  captured = capsys.readouterr()
  assert 'skipping torch' in captured.err and 'skipping tf' in captured.err
  assert 'jax 50.0 GB/s' in captured.out
  row = next(line for line in captured.out.splitlines() if '| expectigrad' in line)
  cells = [cell.strip() for cell in row.strip('|').split('|')]
  lower_bound = 36 * 11_689_512 / 50e9 * 1e3   # ResNet-18's elements at 36 bytes each, in ms
  assert cells[3] == '30.00' and cells[4] == '1.50x adam'
  assert cells[5] == f'{lower_bound:.2f}'
  assert cells[6] == f'{100 * lower_bound / 30.0:.0f}%'


def test_bench_with_nothing_runnable_fails(monkeypatch, capsys):
  bench.import_benchmarks()
  monkeypatch.setitem(sys.modules, 'benchmarks.bench_jax', None)
  assert main(['bench', '--framework', 'jax']) == 1
  assert 'no benchmark could run' in capsys.readouterr().err


def test_bench_outside_a_source_checkout_says_so(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(bench, 'checkout_root', lambda: tmp_path)
  assert main(['bench']) == 2
  line = error_line(capsys)
  assert line.startswith('expectigrad bench: error: bench is a source-checkout tool')
  assert str(tmp_path) in line
  assert 'pip install -e ".[demo]"' in line and '`expectigrad bench`' in line
  assert 'python -m benchmarks.bench_torch' in line


@pytest.mark.parametrize('framework', ['torch', 'keras'])
def test_bridges_train_like_jax(framework):
  """Same weights, same batches, same optax chain underneath: the Expectigrad curves agree."""
  pytest.importorskip({'torch': 'expectigrad.pytorch', 'keras': 'expectigrad.tensorflow2'}[framework])
  task = make_task('digits', 50)
  curves = {fw: demo.train(frameworks_lib.load(fw), fw, 'expectigrad', task, advance=lambda: None)
            for fw in ('jax', framework)}
  np.testing.assert_allclose(curves[framework].train_loss, curves['jax'].train_loss, rtol=1e-3)


def test_console_script_points_at_main_and_loads_no_other_framework():
  import tomllib
  scripts = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['scripts']
  assert scripts == {'expectigrad': 'expectigrad.cli.main:main'}
  loaded = subprocess.run(
      [sys.executable, '-c', 'import sys, expectigrad.cli.main; '
       'print(sorted(m for m in ("torch", "tensorflow", "keras", "matplotlib") if m in sys.modules))'],
      capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
  assert loaded == '[]'
