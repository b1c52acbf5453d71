"""``expectigrad reproduce``: every experiment in a tiny configuration, its files, its numbers, its flags."""

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import pathlib
import platform
import socket

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import roc_auc_score

from expectigrad.cli import reddi, reproduce
from expectigrad.cli.experiments import EXPERIMENT_NAMES, FULL_SEEDS
from expectigrad.cli.main import build_parser, main
from expectigrad.cli.reproduce import (ablations, conv, drift, grid, language, online, optimizers, protocol, quadratic,
                                       reddi_sweep, sparse)

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# A few seconds per experiment; C = 10 with the paper's beta2 = 1/101 is where Adam fails.
TINY = reproduce.Config(reddi_cs=(3.0, 10.0), reddi_beta2s=(0.1, 0.999), reddi_steps=3000,
                        online_steps=20_000, online_records=100, seeds=3, lrs=(1e-3, 1e-2, 1e-1),
                        drift_steps=2000, quadratic_steps=100, sparse_vocab=1000, sparse_examples=2048,
                        lm_lrs=(1e-3, 1e-2), lm_layers=1, lm_width=16, lm_context=16, lm_batch=4, lm_steps=20,
                        lm_held_out=256, conv_channels=4, conv_steps=20)


# Every optimizer of the language model and the conv net is a compile of seconds; these few test their
# path (the default run trains them all, and test_every_competitor_of_the_issue_runs checks the lists).
TINY_OPTIMIZERS = ('expectigrad', 'adam', 'adamw')


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """Every experiment of :data:`TINY` once, offline: (output directory, results, results.md text)."""
  def no_network(*args, **kwargs):
    raise AssertionError('reproduce must not use the network')
  out = tmp_path_factory.mktemp('reproduce')
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(socket.socket, 'connect', no_network)
    for module in (language, conv):
      patch.setattr(module, 'OPTIMIZERS', TINY_OPTIMIZERS)
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
  assert f'jax {jax.__version__}' in text and f'optax {optax.__version__}' in text and 'cores' in text


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
  assert result.seeds == (0, 1, 2)
  for name in online.optimizers():
    assert result.x[name].shape == result.average_regret[name].shape == (TINY.seeds, TINY.online_records, 2)
    assert np.isfinite(result.average_regret[name]).all() and (np.abs(result.x[name]) <= 1).all()
    # The online problem has no randomness: every seed's lane is the same run.
    assert (result.x[name][:, :, 0] == result.x[name][0, :, 0]).all()
  assert result.x['adam'][0, -1, 0] > 0.99
  assert result.x['amsgrad'][0, -1, 0] < 0 and result.x['expectigrad'][0, -1, 0] < 0
  assert len(set(result.mean_gradient[:, 1].tolist())) == TINY.seeds   # the seeds draw differently


def test_online_regret_is_the_sum_of_losses_against_the_optimum():
  """Recording every round, R_t / t equals sum_s g_s (x_{s-1} + 1) / t computed here, for each seed."""
  steps, seeds = 404, (7, 8)
  result = online.simulate(steps, steps, seeds, reproduce.Context(TINY, progress=False))
  for row, seed in enumerate(seeds):
    with jax.enable_x64(True):
      g = np.asarray(jax.vmap(lambda t, s=seed: online.gradients(t, jax.random.key(s)))(jnp.arange(1, steps + 1)))
    assert set(np.unique(g).tolist()) == {-10.0, 1010.0}
    t = np.arange(1, steps + 1)[:, None]
    for name in online.optimizers():
      played = np.vstack([np.zeros((1, 2)), result.x[name][row, :-1]])   # x_t is played before g_t is seen
      np.testing.assert_allclose(result.average_regret[name][row], np.cumsum(g * (played + 1), axis=0) / t,
                                 rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result.mean_gradient[row], g.mean(axis=0), rtol=1e-12)


def test_online_tables_hold_the_returned_numbers(tiny_run):
  _, results, text = tiny_run
  result = results['online']
  deterministic, stochastic = tables_after(text, 'Reddi et al. (2018) section 5')
  assert deterministic == [[name, f'{result.x[name][0, -1, 0]:+.4f}', f'{result.final_regret(name, "online")[0]:.4f}']
                           for name in online.optimizers()]
  for row, name in zip(stochastic, online.optimizers(), strict=True):
    regret = result.final_regret(name, 'stochastic')
    assert row[:3] == [name, f'{result.x[name][:, -1, 1].mean():.3f} ± {result.x[name][:, -1, 1].std(ddof=1):.3f}',
                       f'{regret.mean():.3g} ± {regret.std(ddof=1):.3g}']


def test_compare_calls_by_two_standard_errors():
  reference = np.zeros(3)
  # differences 1, 2, 3: mean 2, standard error 1 / sqrt(3), so 2 SE = 1.15 < 2
  assert protocol.compare(reference, np.array([1.0, 2.0, 3.0])) == protocol.Comparison(2.0, 1 / np.sqrt(3), 'win')
  assert protocol.compare(reference, -np.array([1.0, 2.0, 3.0])).call == 'loss'
  assert protocol.compare(reference, np.array([-1.0, 2.0, 0.5])).call == 'tie'   # mean 0.5, 2 SE 1.73
  assert protocol.compare(np.array([1.0, np.inf]), np.array([2.0, 3.0])).call == 'loss'
  assert protocol.compare(np.array([1.0, 2.0]), np.array([np.nan, 3.0])).call == 'win'
  with pytest.raises(ValueError, match='>= 2 seeds'):
    protocol.compare(np.zeros(1), np.zeros(1))


def test_the_learning_rate_is_chosen_on_validation_only():
  """Test data that would pick another rate changes nothing but the reported value."""
  lrs = (1e-3, 1e-2, 1e-1, 1.0)
  validation = np.array([[2.0, 1.05, 1.0, np.inf], [2.2, 1.08, 1.0, 3.0]])
  test = np.array([[0.1, 5.0, 4.0, 0.0], [0.1, 5.0, 4.0, 0.0]])
  scores = protocol.Scores(lrs, (0, 1), validation, test, {}, 1e-2)
  assert scores.chosen() == 2 and scores.default() == 1
  np.testing.assert_array_equal(scores.at_chosen(), [4.0, 4.0])
  # 1e-2 is within 10% of the best (1.065 <= 1.1), 1e-3 is not, 1.0 diverged in one seed
  assert scores.near_best() == (1e-2, 1e-1) and scores.width_decades() == pytest.approx(1.0)


def best_on_validation(scores: protocol.Scores) -> int:
  """The rate with the lowest mean validation metric over seeds, a rate where any seed diverged ranking last."""
  diverged = ~np.isfinite(scores.validation).all(axis=0)
  return int(np.argmin(np.where(diverged, np.inf, scores.validation.mean(axis=0))))


def test_tuned_tables_have_n_the_rule_and_the_returned_numbers(tiny_run):
  _, results, text = tiny_run
  assert protocol.RULE in text
  for name, marker in (('sparse', 'Sparse embeddings'), ('quadratic', 'Noisy quadratic'), ('drift', 'A drifting'),
                       ('language', 'A byte-level'), ('conv', 'A convolutional')):
    tuned = results[name].tuned if name == 'drift' else results[name]
    assert f'test {tuned.metric}, n={TINY.seeds}' in text
    summary = tables_after(text, marker)[0]
    for row, (optimizer, s) in zip(summary, tuned.scores.items(), strict=True):
      chosen = best_on_validation(s)
      values = s.test[:, chosen]
      assert row[:3] == [optimizer, f'{s.lrs[chosen]:.1e}', f'{values.mean():.3g} ± {values.std(ddof=1):.3g}']
      if optimizer != protocol.REFERENCE:
        reference = tuned.scores[protocol.REFERENCE]
        difference = values - reference.test[:, best_on_validation(reference)]
        mean, two_se = difference.mean(), 2 * difference.std(ddof=1) / np.sqrt(TINY.seeds)
        assert row[3] == f'{"+" if mean >= 0 else "-"}{abs(mean):.3g} ± {two_se:.3g}'
        assert row[4] == ('win' if mean > two_se else 'loss' if mean < -two_se else 'tie')


def test_every_comparison_is_in_the_claims_table(tiny_run):
  _, results, text = tiny_run
  rows = tables_after(text, reproduce.runner.CLAIMS_TITLE)[0]
  expected = [(name, competitor, c.call) for name, module in reproduce.EXPERIMENTS.items()
              if hasattr(module, 'claims') for _, competitor, c in module.claims(results[name])]
  assert [(row[0], row[2], row[4]) for row in rows] == expected
  assert {'sparse', 'drift', 'quadratic', 'online', 'language', 'conv', 'ablations'} <= {row[0] for row in rows}


def test_seeds_are_paired_and_held_out_data_is_never_trained_on(tiny_run):
  results = tiny_run[1]
  for name in ('sparse', 'quadratic', 'language', 'conv'):
    assert {s.seeds for s in results[name].scores.values()} == {(0, 1, 2)}
  context = reproduce.Context(TINY, progress=False)
  data = sparse.data(context)
  stream = np.asarray(data.batches['ids'])
  assert stream.shape == (TINY.seeds, TINY.sparse_examples // sparse.BATCH, sparse.BATCH, sparse.FIELDS, sparse.BAG)
  validation, test = (np.asarray(data.held_out[split]['ids']) for split in grid.SPLITS)
  assert not np.array_equal(validation, test) and not np.array_equal(stream[0, :2].reshape(-1, 4, 2), test[0, :128])
  # The same seed makes the same data (every optimizer trains on it); another seed does not.
  np.testing.assert_array_equal(np.asarray(sparse.data(context).batches['ids']), stream)
  assert not np.array_equal(stream[0], stream[1])


def test_a_grid_lane_is_a_plain_optax_loop():
  """Seed 1 at the second learning rate of the vmapped grid trains like a loop of optax updates."""
  context = reproduce.Context(dataclasses.replace(TINY, seeds=2, lrs=(1e-3, 3e-2), sparse_examples=640),
                              progress=False)
  problem, data = sparse.problem(context), sparse.data(context)
  metrics = grid.train(problem, optimizers.adam, data, context.config.lrs, lambda n: None)
  params = problem.init(data.keys[1])
  opt = optax.adam(3e-2, b1=0.9, eps=1e-8)
  state = opt.init(params)
  for step in range(data.steps):
    batch = jax.tree.map(lambda a, step=step: a[1, step], data.batches)
    updates, state = opt.update(jax.grad(problem.loss)(params, batch), state, params)
    params = optax.apply_updates(params, updates)
  test = jax.tree.map(lambda a: a[1], data.held_out['test'])
  logits = sparse._logits(params, test['ids'])   # pylint: disable=protected-access
  labels = np.asarray(test['labels'])
  log_loss = np.mean(np.logaddexp(0, logits) - labels * logits)
  np.testing.assert_allclose(metrics['test']['log-loss'][1, 1], log_loss, rtol=1e-4)
  np.testing.assert_allclose(metrics['test']['AUC'][1, 1], roc_auc_score(labels, logits), rtol=1e-5)


def test_sparse_rare_examples_have_an_id_seen_fewer_than_five_times():
  train, validation, _ = sparse._seed_data(500, 1024, 3)   # pylint: disable=protected-access
  ids = train['ids'].reshape(-1, sparse.FIELDS, sparse.BAG)
  for example, rare in zip(validation['ids'][:50], validation['rare'][:50]):
    counts = [np.sum(ids[:, f] == i) for f in range(sparse.FIELDS) for i in example[f]]
    assert bool(rare) == (min(counts) < sparse.RARE_COUNT)


def test_quadratic_is_deepobs_and_its_minibatch_gradient_is_exact():
  eigenvalues = np.linalg.eigvalsh(quadratic.hessian())
  assert ((eigenvalues[:90] > 0) & (eigenvalues[:90] < 1)).all()
  assert ((eigenvalues[90:] > 30) & (eigenvalues[90:] < 60)).all()
  h = jnp.asarray(quadratic.hessian(), jnp.float32)
  theta = jnp.linspace(-1, 1, quadratic.DIMENSION)
  samples = jax.random.normal(jax.random.key(0), (quadratic.BATCH, quadratic.DIMENSION))
  full = jax.grad(quadratic._loss_on, argnums=1)(h, theta, samples)   # pylint: disable=protected-access
  np.testing.assert_allclose(full, h @ (theta - samples.mean(axis=0)), rtol=1e-4, atol=1e-4)


def test_drift_regret_with_a_frozen_point_is_the_distance_to_the_walk():
  """At learning rate 0, x stays at theta_0: R_T / T is the mean of 0.5 |theta_0 - theta_t|^2 over the walk."""
  config = dataclasses.replace(TINY, seeds=2, lrs=(0.0,), drift_steps=400, online_records=4)
  context = reproduce.Context(config, progress=False)
  regret = drift.simulate(context, optimizers.sgd_momentum, lambda n: None)
  assert regret.shape == (4, 1, 4)
  key = drift._stream_keys(context)[3]   # pylint: disable=protected-access
  theta0 = theta = jax.random.normal(key, (drift.DIMENSION,))
  losses = []
  for t in range(1, 401):
    theta, _, _ = drift._round(key, t, theta)   # pylint: disable=protected-access
    losses.append(0.5 * float(jnp.sum((theta0 - theta) ** 2)))
  np.testing.assert_allclose(regret[3, 0], np.cumsum(losses)[[99, 199, 299, 399]] / [100, 200, 300, 400], rtol=1e-4)


@pytest.mark.parametrize('task', ['sparse', 'language'])
def test_ablation_corners_reuse_the_task_grids_and_the_others_differ(tiny_run, task):
  results = tiny_run[1]
  variants = results['ablations'].tasks[task].scores
  assert list(variants) == list(ablations.VARIANTS)
  assert variants['expectigrad'] is results[task].scores['expectigrad']
  assert variants['adam'] is results[task].scores['adam']
  for name in ('arithmetic + inner', 'EMA + outer'):
    assert not np.allclose(variants[name].validation, variants['expectigrad'].validation), name
  assert {s.lrs for s in variants.values()} == {results[task].scores['adam'].lrs}


def test_language_text_is_the_listed_stdlib_modules_and_the_section_records_it(tiny_run):
  """The text is each listed module's source file, as ``inspect`` finds it, in order; the results name the
  Python version and the text's sha256."""
  sources = [pathlib.Path(inspect.getsourcefile(importlib.import_module(name.removesuffix('.py')))).read_bytes()
             for name in language.MODULES]
  corpus = b''.join(sources)
  assert language.text() == corpus
  text = tiny_run[2]
  assert hashlib.sha256(corpus).hexdigest() in text and f'Python {platform.python_version()}' in text
  parts = language.splits(corpus, TINY.lm_held_out)
  assert b''.join(p.tobytes() for p in parts.values()) == corpus
  assert len(parts['validation']) == len(parts['test']) == TINY.lm_held_out
  assert parts['test'].tobytes() == sources[-1][-TINY.lm_held_out:]   # queue.py's end
  with pytest.raises(ValueError, match='too few'):
    language.splits(b'x' * 10, 4)


def test_language_windows_predict_every_held_out_byte_once_and_train_windows_come_from_train():
  part = np.arange(50, dtype=np.uint8)
  windows = language.held_out_windows(part, 16)
  assert windows.shape == (3, 17)
  np.testing.assert_array_equal(np.concatenate([w[1:] for w in windows]), part[1:49])
  context = reproduce.Context(TINY, progress=False)
  data = language.data(context)
  train = language.splits(language.text(), TINY.lm_held_out)['train'].tobytes()
  batches = np.asarray(data.batches)
  assert batches.shape == (TINY.seeds, TINY.lm_steps, TINY.lm_batch, TINY.lm_context + 1)
  assert all(window.tobytes() in train for window in batches[:, :3].reshape(-1, TINY.lm_context + 1))
  np.testing.assert_array_equal(np.asarray(language.data(context).batches), batches)   # paired: same data
  assert not np.array_equal(batches[0], batches[1])
  held_out = np.asarray(data.held_out['test'])
  assert (held_out == held_out[0]).all()   # every seed is scored on the same text


def test_language_model_is_causal_and_uniform_logits_cost_eight_bits():
  params = jax.jit(language.problem(reproduce.Context(TINY, progress=False)).init)(jax.random.key(0))
  window = jnp.asarray(np.frombuffer(b'def f(x):\n  return x', np.uint8)[:TINY.lm_context + 1], jnp.int32)
  model = jax.jit(language._logits)   # pylint: disable=protected-access
  logits, changed = model(params, window[None, :-1]), model(params, window[None, :-1].at[0, 10].set(0))
  np.testing.assert_array_equal(logits[0, :10], changed[0, :10])   # a byte does not see those after it
  assert not np.allclose(logits[0, 10:], changed[0, 10:])
  uniform = jax.tree.map(jnp.zeros_like, params)   # logits all zero: log2(256) bits for every byte
  np.testing.assert_allclose(language._bits_per_byte(uniform, window[None]), 8.0, rtol=1e-6)  # pylint: disable=protected-access


def test_conv_layer_is_laxs_strided_convolution():
  x = jax.random.normal(jax.random.key(0), (3, conv.LENGTH, 2))
  w = jax.random.normal(jax.random.key(1), (conv.KERNEL, 2, 4))   # (offset, in, out)
  b = jnp.arange(4.0)
  expected = jax.lax.conv_general_dilated(x, w, (conv.STRIDE,), [(conv.KERNEL // 2, conv.KERNEL // 2)],
                                          dimension_numbers=('NWC', 'WIO', 'NWC')) + b
  ours = conv.conv1d(x, w.reshape(conv.KERNEL * 2, 4), b)
  assert ours.shape == (3, conv.LENGTH // conv.STRIDE, 4)
  np.testing.assert_allclose(ours, expected[:, :conv.LENGTH // conv.STRIDE], rtol=1e-5, atol=1e-5)


def test_conv_data_is_mnist1d_split_and_batches_are_shuffled_epochs():
  from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=import-outside-toplevel
  raw = make_dataset(get_dataset_args())
  sets = conv.dataset()
  np.testing.assert_array_equal(np.concatenate([sets['train']['x'], sets['validation']['x']]),
                                raw['x'].astype(np.float32))
  np.testing.assert_array_equal(sets['test']['y'], raw['y_test'])
  assert len(sets['validation']['y']) == conv.VALIDATION
  per_epoch = len(sets['train']['y']) // conv.BATCH
  steps = 2 * per_epoch
  context = reproduce.Context(dataclasses.replace(TINY, conv_steps=steps), progress=False)
  data = conv.data(context)
  x = np.asarray(data.batches['x'])
  assert x.shape == (TINY.seeds, steps, conv.BATCH, conv.LENGTH)
  for seed in range(TINY.seeds):
    for epoch in range(2):   # each training sequence at most once an epoch, none held out
      seen = {row.tobytes() for row in x[seed, epoch * per_epoch:(epoch + 1) * per_epoch].reshape(-1, conv.LENGTH)}
      assert len(seen) == per_epoch * conv.BATCH
      assert seen <= {row.tobytes() for row in sets['train']['x']}
  assert not np.array_equal(x[0], x[1])
  np.testing.assert_array_equal(np.asarray(conv.data(context).batches['y']), np.asarray(data.batches['y']))


def test_every_competitor_of_the_issue_runs():
  """Issue #20's competitors, each an optax optimizer (or Expectigrad) with a default rate on the grids."""
  competitors = {'expectigrad', 'adam', 'adamw', 'amsgrad', 'adagrad', 'sgd+momentum', 'lion'}
  assert set(language.OPTIMIZERS) == set(conv.OPTIMIZERS) == competitors
  for name in competitors:
    for lrs in (reproduce.DEFAULT.lrs, reproduce.DEFAULT.lm_lrs):
      assert np.isclose(lrs, optimizers.DEFAULT_LRS[name], rtol=1e-9).any(), (name, lrs)
    assert isinstance(optimizers.FACTORIES[name](1e-3), optax.GradientTransformation)


def test_seeds_wrap_at_the_seed_limit():
  context = reproduce.Context(TINY, seed=2**32 - 1)
  assert grid.seeds(context) == (2**32 - 1, 0, 1)


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


def test_missing_demo_extra_is_named_before_any_work(tmp_path, monkeypatch, capsys):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *args: None if name == 'tqdm' else real_find_spec(name, *args))
  assert main(['reproduce', '--only', 'sparse', '--out', str(tmp_path)]) == 2
  line = error_line(capsys)
  assert line.startswith('expectigrad reproduce: error: tqdm') and '".[demo]"' in line
  assert not list(tmp_path.iterdir())   # reported before any work


def test_missing_mnist1d_is_named_only_when_conv_runs(tmp_path, monkeypatch, capsys):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *args: None if name == 'mnist1d' else real_find_spec(name, *args))
  monkeypatch.setitem(reproduce.CONFIGS, 'default', TINY)
  assert main(['reproduce', '--only', 'conv', '--out', str(tmp_path / 'a')]) == 2
  assert error_line(capsys).startswith('expectigrad reproduce: error: mnist1d')
  assert main(['reproduce', '--only', 'reddi-sweep', '--out', str(tmp_path / 'b'), '--no-progress']) == 0


def test_full_help_gives_the_configured_sizes():
  _, commands = build_parser()
  text = ' '.join(commands['reproduce'].format_help().split())
  assert f'{reproduce.FULL.seeds} seeds' in text and reproduce.FULL.seeds == FULL_SEEDS


@pytest.fixture(scope='module')
def default_tables():
  """The tables the default run (seed 0) prints for the experiments README.md and docs/cli.md quote,
  and its claims rows (about 3 minutes on 2 cores: the language model's grids take most of it)."""
  context = reproduce.Context(reproduce.DEFAULT, seed=0, progress=False)
  results = {name: reproduce.EXPERIMENTS[name].run(context) for name in QUOTED}
  claims = tables_after('## x\n\n' + reproduce.runner.claims_table(results), 'x')[0]
  return {name: reproduce.EXPERIMENTS[name].section(results[name]) for name in QUOTED}, claims


# The experiments whose default-run numbers README.md and docs/cli.md quote and this file reruns, and
# the README's claims rows: (experiment, metric).
QUOTED = ('online', 'drift', 'quadratic', 'sparse', 'language', 'conv', 'ablations')
RERUN = {('online', 'stochastic R_T / T'), ('drift', 'R_T / T'), ('quadratic', 'loss'), ('sparse', 'log-loss'),
         ('language', 'bits/byte'), ('conv', 'cross-entropy'), ('ablations', 'sparse log-loss'),
         ('ablations', 'language bits/byte')}


def test_docs_tables_are_what_the_default_run_prints(default_tables):
  """docs/cli.md quotes the default run: its tables must not drift from the code."""
  sections, _ = default_tables
  docs = (ROOT / 'docs' / 'cli.md').read_text()
  for name, text in sections.items():
    for table in [part for part in text.split('\n\n') if part.startswith('|')]:
      assert table in docs, f'docs/cli.md should quote the {name} run:\n{table}'


def test_readme_claims_are_what_the_default_run_prints(default_tables):
  """Every README row about these experiments is a row of the default run's claims table."""
  _, claims = default_tables
  readme = (ROOT / 'README.md').read_text()
  quoted = [row for row in tables_after(readme.replace('### ', '## '), 'Claims')[0] if tuple(row[:2]) in RERUN]
  assert {tuple(row[:2]) for row in quoted} == RERUN and all(row in claims for row in quoted), (quoted, claims)


def test_python_api_rejects_bad_values():
  with pytest.raises(ValueError, match='multiple of online_records'):
    reproduce.Config(online_steps=1001, online_records=1000)
  with pytest.raises(ValueError, match='seeds must be >= 2'):
    reproduce.Config(seeds=1)
  with pytest.raises(ValueError, match='experiments must be among'):
    reproduce.run_reproduce(None, TINY, only=['reddi'])
