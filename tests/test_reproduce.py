"""``expectigrad reproduce``: every experiment in a tiny configuration, its files, its numbers, its flags."""

import dataclasses
import importlib.util
import pathlib
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expectigrad.cli import reddi, reproduce
from expectigrad.cli.frameworks import jax_mlp
from expectigrad.cli.main import EXPERIMENT_NAMES, build_parser, main
from expectigrad.cli.reproduce import ablations, lr_robustness, mlp_grid, online, reddi_sweep
from expectigrad.cli.task import make_task

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# A few seconds per experiment; C = 10 with the paper's beta2 = 1/101 is where Adam fails.
TINY = reproduce.Config(reddi_cs=(3.0, 10.0), reddi_beta2s=(0.1, 0.999), reddi_steps=3000,
                        online_steps=20_000, online_records=100, lrs=(1e-3, 1e-2, 1e-1), seeds=3,
                        train_steps=200, datasets=('digits',))


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """Every experiment of :data:`TINY` once: (output directory, results, results.md text)."""
  out = tmp_path_factory.mktemp('reproduce')
  results = reproduce.run_reproduce(out, TINY, seed=0, progress=False)
  return out, results, (out / reproduce.RESULTS).read_text()


def tables_after(text: str, marker: str) -> list[list[list[str]]]:
  """The Markdown tables (body rows, cells stripped) of the section whose heading contains ``marker``."""
  body = text.split(f'## {marker}', 1)[1].split('\n## ', 1)[0]
  found, rows = [], None
  for line in body.splitlines() + ['']:
    if line.startswith('|'):
      rows = [] if rows is None else rows
      rows.append([cell.strip() for cell in line.strip('|').split('|')])
    elif rows is not None:
      found.append(rows[2:])   # without the header and the rule
      rows = None
  return found


def test_every_experiment_writes_its_figure_and_a_section(tiny_run, capsys):
  out, results, text = tiny_run
  for name in EXPERIMENT_NAMES:
    assert (out / f'{name}.png').read_bytes().startswith(PNG_MAGIC), name
    assert f']({name}.png)' in text and results['wall_s'][name] > 0
  assert text.startswith('# ') and f'{results["total_s"]:.1f} s in all' in text
  assert list(reproduce.EXPERIMENTS) == list(EXPERIMENT_NAMES)


def test_reddi_sweep_sends_adam_to_the_worst_point_and_expectigrad_to_the_optimum(tiny_run):
  sweep = tiny_run[1]['reddi-sweep']
  assert sweep.beta2_labels == (reddi_sweep.PAPER_BETA2, '0.1', '0.999')
  np.testing.assert_allclose(sweep.beta2[0], [1 / 10, 1 / 101], rtol=1e-6)
  # The paper's beta2 = 1/(1 + C^2) sends Adam to +1 for every C; a large beta2 does not.
  assert (sweep.final_x['adam'][0] > 0.95).all() and (sweep.final_x['adam'][2] < -0.9).all()
  assert (sweep.final_x['amsgrad'] < -0.95).all() and (sweep.final_x['expectigrad'] < -0.95).all()
  assert (sweep.final_x['expectigrad'] == sweep.final_x['expectigrad'][0]).all()   # no beta2: same run
  assert reddi_sweep.ended_at(sweep, 'adam', 1.0) >= 3 and reddi_sweep.ended_at(sweep, 'expectigrad', 1.0) == 0


def test_reddi_sweep_lanes_match_the_reddi_command(tiny_run):
  """At C = 3, beta2 = 0.1 a lane of the vmapped sweep is ``expectigrad reddi``'s run."""
  sweep = tiny_run[1]['reddi-sweep']
  np.testing.assert_array_equal(reddi_sweep.gradient(jnp.arange(1, 7), 3.0), reddi.reddi_gradient(jnp.arange(1, 7)))
  for name, optimizer in reddi.optimizers().items():
    expected = reddi.trajectory(optimizer, TINY.reddi_steps)[-1]
    np.testing.assert_allclose(sweep.final_x[name][1, 0], expected, atol=1e-5)


def test_reddi_sweep_table_holds_the_returned_numbers(tiny_run):
  _, results, text = tiny_run
  sweep = results['reddi-sweep']
  (rows,) = tables_after(text, 'Reddi et al. (2018) section 3')
  expected = [(name, i) for name in reddi_sweep.OPTIMIZERS for i in range(1 if name == 'expectigrad' else 3)]
  assert [row[0] for row in rows] == [name for name, _ in expected]
  for row, (name, i) in zip(rows, expected):
    assert row[2:] == [f'{x:+.2f}' for x in sweep.final_x[name][i]]


def test_online_regret_and_points_are_consistent(tiny_run):
  result = tiny_run[1]['online']
  stride = TINY.online_steps // TINY.online_records
  np.testing.assert_array_equal(result.t, stride * np.arange(1, TINY.online_records + 1))
  for name in online.optimizers():
    assert result.x[name].shape == result.average_regret[name].shape == (TINY.online_records, 2)
    assert np.isfinite(result.average_regret[name]).all() and (np.abs(result.x[name]) <= 1).all()
  # Already after 2e4 rounds Adam sits at the worst point of the online problem; the others below 0.
  assert result.x['adam'][-1, 0] > 0.99
  assert result.x['amsgrad'][-1, 0] < 0 and result.x['expectigrad'][-1, 0] < 0


def test_online_regret_is_the_sum_of_losses_against_the_optimum():
  """Recording every round, R_t / t equals sum_s g_s (x_{s-1} + 1) / t computed here."""
  steps, seed = 404, 7
  result = online.simulate(steps, steps, seed, reproduce.Context(TINY, progress=False))
  with jax.enable_x64(True):
    g = np.asarray(jax.vmap(lambda t: online.gradients(t, jax.random.key(seed)))(jnp.arange(1, steps + 1)))
  assert (g[:, 0] == 1010).sum() == 4 and set(np.unique(g).tolist()) == {-10.0, 1010.0}
  t = np.arange(1, steps + 1)[:, None]
  for name in online.optimizers():
    played = np.vstack([np.zeros((1, 2)), result.x[name][:-1]])   # x_t is played before g_t is seen
    np.testing.assert_allclose(result.average_regret[name], np.cumsum(g * (played + 1), axis=0) / t,
                               rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(result.mean_gradient, g.mean(axis=0), rtol=1e-12)


def test_online_table_holds_the_returned_numbers(tiny_run):
  _, results, text = tiny_run
  result = results['online']
  (rows,) = tables_after(text, 'Reddi et al. (2018) section 5')
  expected = [[problem, name, f'{result.x[name][-1, p]:+.4f}', f'{result.average_regret[name][-1, p]:.4f}']
              for p, problem in enumerate(online.PROBLEMS) for name in online.optimizers()]
  assert rows == expected


def test_lr_grid_has_accuracies_in_range_and_trains(tiny_run):
  grids = tiny_run[1]['lr-robustness']
  assert list(grids) == ['digits'] and list(grids['digits']) == list(lr_robustness.OPTIMIZERS)
  for name, grid in grids['digits'].items():
    assert grid.test_accuracy.shape == grid.train_loss.shape == (TINY.seeds, len(TINY.lrs))
    assert ((grid.test_accuracy >= 0) & (grid.test_accuracy <= 1)).all()
    assert grid.test_accuracy[:, grid.best()].mean() > 0.8, name
    assert grid.test_accuracy.std(axis=0).max() > 0, name   # seeds differ: weights, batches, split
    assert grid.lrs[grid.best()] in grid.working_lrs()


def test_lr_and_ablation_tables_hold_the_returned_numbers(tiny_run):
  _, results, text = tiny_run
  for experiment, marker in (('lr-robustness', 'Robustness'), ('ablations', 'Ablations')):
    grids = results[experiment]['digits']
    summary, accuracy, *rest = tables_after(text, marker)
    for row, (name, grid) in zip(summary, grids.items(), strict=True):
      b = grid.best()
      assert row[0] == name
      assert row[-4:-1] == [f'{grid.lrs[b]:.1e}', mlp_grid.format_loss(grid.train_loss[:, b].mean()),
                            f'{grid.test_accuracy[:, b].mean():.3f} ± {grid.test_accuracy[:, b].std():.3f}']
    for row, grid in zip(accuracy, grids.values(), strict=True):
      assert [float(cell) for cell in row[1:]] == pytest.approx(grid.test_accuracy.mean(axis=0), abs=5e-4)
    if experiment == 'lr-robustness':
      (loss,) = rest
      for row, grid in zip(loss, grids.values(), strict=True):
        assert row[1:] == [mlp_grid.format_loss(v) for v in grid.train_loss.mean(axis=0)]


def test_ablation_corners_reuse_the_lr_grids_and_the_others_differ(tiny_run):
  results = tiny_run[1]
  lr_grids, ablation_grids = results['lr-robustness']['digits'], results['ablations']['digits']
  assert list(ablation_grids) == list(ablations.VARIANTS)
  assert ablation_grids['expectigrad'] is lr_grids['expectigrad'] and ablation_grids['adam'] is lr_grids['adam']
  for name in ('arithmetic + inner', 'EMA + outer'):
    assert not np.allclose(ablation_grids[name].train_loss, lr_grids['expectigrad'].train_loss), name


def test_a_grid_lane_is_the_demo_trainer():
  """Seed 0 at lr 1e-3 in the vmapped grid trains exactly like the demo's jitted JAX trainer."""
  context = reproduce.Context(dataclasses.replace(TINY, lrs=(1e-3, 3e-2), seeds=2, train_steps=60), progress=False)
  grid = mlp_grid.train_grid(context, 'digits', lr_robustness.OPTIMIZERS['expectigrad'], lambda n: None)
  task = make_task('digits', 60, 0)
  trainer = jax_mlp.JaxTrainer(task.init_params, 'expectigrad')   # the demo's lr is 1e-3
  for batch in task.batches:
    trainer.step(task.x_train[batch], task.y_train[batch])
  loss = trainer.evaluate(task.x_train, task.y_train)[0]
  accuracy = trainer.evaluate(task.x_test, task.y_test)[1]
  np.testing.assert_allclose([grid.train_loss[0, 0], grid.test_accuracy[0, 0]], [loss, accuracy], rtol=1e-4)


def test_mnist1d_grid_runs_offline(monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError('reproduce must not use the network')
  monkeypatch.setattr(socket.socket, 'connect', no_network)
  context = reproduce.Context(dataclasses.replace(TINY, seeds=2, train_steps=50), seed=5, progress=False)
  grid = mlp_grid.train_grid(context, 'mnist1d', lr_robustness.OPTIMIZERS['adam'], lambda n: None)
  assert grid.seeds == (5, 6) and grid.test_accuracy.shape == (2, 3)
  assert ((grid.test_accuracy >= 0) & (grid.test_accuracy <= 1)).all() and np.isfinite(grid.train_loss).all()


def test_seeds_wrap_at_the_seed_limit():
  context = reproduce.Context(TINY, seed=2**32 - 1)
  assert mlp_grid.seeds(context) == (2**32 - 1, 0, 1)


@pytest.mark.parametrize('total, target, expected', [
    (3000, 10, 10), (1000, 20, 20), (7, 10, 7), (13, 10, 1), (1, 10, 1),
])
def test_pieces_are_equal_and_cover_the_range(total, target, expected):
  pieces = reproduce.common.pieces(total, target)
  assert len(pieces) == expected and pieces[0][0] == 0 and pieces[-1][1] == total
  assert len({stop - start for start, stop in pieces}) == 1
  assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))


def test_command_runs_the_chosen_experiments_with_the_configured_sizes(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(reproduce.CONFIGS, 'default', TINY)
  monkeypatch.setitem(reproduce.CONFIGS, 'full', dataclasses.replace(TINY, reddi_steps=30))
  assert main(['reproduce', '--only', 'reddi-sweep', '--out', str(tmp_path / 'a'), '--no-progress']) == 0
  assert main(['reproduce', '--full', '--only', 'reddi-sweep', 'online', '--out', str(tmp_path / 'b'),
               '--seed', '3', '--no-progress']) == 0
  out = capsys.readouterr().out
  assert sorted(p.name for p in (tmp_path / 'a').iterdir()) == ['reddi-sweep.png', 'results.md']
  assert sorted(p.name for p in (tmp_path / 'b').iterdir()) == ['online.png', 'reddi-sweep.png', 'results.md']
  assert f'after {TINY.reddi_steps} projected steps' in (tmp_path / 'a' / 'results.md').read_text()
  full = (tmp_path / 'b' / 'results.md').read_text()
  assert 'after 30 projected steps' in full and 'seed 3' in full
  assert 'total run time: ' in out and '| optimizer' in out


def error_line(capsys) -> str:
  """stderr's error, checked to be one line (after argparse's usage) with no traceback."""
  err = capsys.readouterr().err
  assert 'Traceback' not in err, err
  errors = [line for line in err.splitlines() if 'error:' in line]
  assert len(errors) == 1 and err.rstrip('\n').splitlines()[-1] == errors[0], err
  return errors[0]


@pytest.mark.parametrize('argv, complaint', [
    (['reproduce', '--only', 'bogus'], "argument --only: invalid choice: 'bogus'"),
    (['reproduce', '--only'], 'argument --only: expected at least one argument'),
    (['reproduce', '--seed', '-1'], "argument --seed: must be an integer from 0 to 4294967295 (2**32 - 1), got '-1'"),
    (['reproduce', '--seed', 'one'], "argument --seed: must be an integer from 0 to 4294967295 (2**32 - 1), got 'one'"),
    (['reproduce', '--full', 'yes'], 'unrecognized arguments: yes'),
    (['reproduce', '--steps', '10'], 'unrecognized arguments: --steps 10'),
])
def test_bad_values_exit_2_with_one_error_line(argv, complaint, capsys):
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  assert complaint in error_line(capsys)


def test_output_path_under_a_file_is_one_error_line(tmp_path, capsys):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  assert main(['reproduce', '--out', str(blocker / 'sub')]) == 2
  assert error_line(capsys).startswith('expectigrad reproduce: error: --out ')


def test_missing_dataset_module_is_named_only_when_needed(tmp_path, monkeypatch, capsys):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *args: None if name == 'mnist1d' else real_find_spec(name, *args))
  monkeypatch.setitem(reproduce.CONFIGS, 'default', dataclasses.replace(TINY, datasets=('digits', 'mnist1d')))
  assert main(['reproduce', '--only', 'ablations', '--out', str(tmp_path)]) == 2
  line = error_line(capsys)
  assert line.startswith('expectigrad reproduce: error: mnist1d') and '".[demo]"' in line
  assert not list(tmp_path.iterdir())   # reported before any work


def test_full_help_gives_the_configured_sizes():
  _, commands = build_parser()
  text = ' '.join(commands['reproduce'].format_help().split())
  assert f'{reproduce.FULL.seeds} seeds' in text


def test_docs_mnist1d_table_is_what_the_default_run_prints():
  """docs/cli.md quotes the default run (seed 0): its MNIST-1D summary must not drift from the code."""
  config = dataclasses.replace(reproduce.DEFAULT, datasets=('mnist1d',))
  context = reproduce.Context(config, seed=0, progress=False)
  grids = mlp_grid.run_grids(context, lr_robustness.OPTIMIZERS, 'learning-rate grid')
  table = mlp_grid.summary_table(grids['mnist1d'])
  docs = (ROOT / 'docs' / 'cli.md').read_text()
  assert table in docs, f'docs/cli.md should quote the run:\n{table}'


def test_python_api_rejects_bad_values():
  with pytest.raises(ValueError, match='multiple of online_records'):
    reproduce.Config(online_steps=1001, online_records=1000)
  with pytest.raises(ValueError, match='experiments must be among'):
    reproduce.run_reproduce(None, TINY, only=['reddi'])
