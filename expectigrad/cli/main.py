"""``expectigrad demo | reddi | bench | reproduce``: argument parsing and dispatch.

Every bad flag or value ends with exit status 2 (argparse's convention) and
one ``error:`` line: argparse checks the syntax and ranges of the values
(``--seed``, ``--steps``, ``--rounds``, the choices, ``--only``), and a value the machine
cannot use (a framework or the ``demo`` extra that is not installed, naming
the extra to install; an output path under a file; ``bench`` outside a
source checkout) is reported the same way before any work starts. A run that
fails on its own (no benchmark could run) ends with status 1. None prints a
traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import tempfile
from typing import Callable, Sequence

from expectigrad.cli import frameworks as frameworks_lib
from expectigrad.cli.demo import DEFAULT_STEPS, run_demo
from expectigrad.cli.errors import CommandError, UsageError
from expectigrad.cli.experiments import EXPERIMENT_NAMES, FULL_SEEDS, SEED_LIMIT
from expectigrad.cli.task import DATASETS

# Upper bounds of the counts, each with the reason the error message gives.
DEMO_STEP_LIMIT = (100_000, "every step's batch indices are drawn up front, 512 bytes a step, "
                            'and each optimizer then runs every step in a Python loop')
REDDI_STEP_LIMIT = (10_000_000, 'x is kept for every round and plotted, 4 bytes a round and optimizer')
ROUND_LIMIT = (1000, 'each round times every workload; the scripts default to a few')


def _count(limit: tuple[int, str]) -> Callable[[str], int]:
  """An argparse type for an integer from 1 to ``limit[0]``, whose error gives the reason ``limit[1]``.

  The bound is checked while parsing, before any work: a huge count would
  otherwise overflow, exhaust memory or run for hours.
  """
  upper, why = limit

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      value = 0
    if not 1 <= value <= upper:
      raise argparse.ArgumentTypeError(
          f'must be an integer >= 1 and <= {upper} ({why}), got {text!r}')
    return value

  return parse


def _seed(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = -1
  if not 0 <= value < SEED_LIMIT:
    raise argparse.ArgumentTypeError(f'must be an integer from 0 to {SEED_LIMIT - 1} (2**32 - 1), got {text!r}')
  return value


# Modules of the ``demo`` extra -> what they are needed for.
_DEMO_EXTRA = {'matplotlib': 'the plots', 'tqdm': 'the progress bar', 'sklearn': 'the digits dataset',
               'mnist1d': 'the mnist1d dataset'}


def _require_demo_extra(*modules: str) -> None:
  """Checks, before any work, that the ``demo`` extra's ``modules`` are installed."""
  for module in modules:
    if importlib.util.find_spec(module) is None:
      raise UsageError(f'{module} ({_DEMO_EXTRA[module]}) is not installed: '
                       f'{frameworks_lib.install_hint("demo")}')


def _output_dir(path: pathlib.Path) -> pathlib.Path:
  """Creates ``path`` if needed and writes a file there, before any minutes are spent training.

  Raises:
    UsageError: if the folder cannot be created or written to (a read-only
      folder would otherwise fail only after the experiment has run).
  """
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as error:
    raise UsageError(f'--out {str(path)!r} cannot be used as an output directory: {error.strerror}') from error
  return path


def _demo(args: argparse.Namespace) -> None:
  _require_demo_extra('matplotlib', 'tqdm', 'sklearn' if args.dataset == 'digits' else 'mnist1d')
  run_demo(args.framework, args.dataset, args.steps, _output_dir(args.out), args.seed,
           progress=not args.no_progress)


def _reddi(args: argparse.Namespace) -> None:
  # pylint: disable=import-outside-toplevel
  from expectigrad.cli import plots, reddi, tables
  _require_demo_extra('matplotlib')
  out = _output_dir(args.out)
  trajectories = {name: reddi.trajectory(opt, args.steps) for name, opt in reddi.optimizers().items()}
  title = (f'Reddi et al. (2018) online problem: optimum x = -1, worst point x = +1 '
           f'(Adam with b1={reddi.ADAM_B1:g}, b2={reddi.ADAM_B2:g}; Expectigrad with its defaults)')
  table = tables.markdown_table(['optimizer', f'x after {args.steps} steps'],
                                [[name, f'{xs[-1]:+.4f}'] for name, xs in trajectories.items()],
                                numeric=[False, True])
  (out / 'reddi.md').write_text(f'{title}\n\n{table}\n')
  plots.plot_trajectories(trajectories, out / 'reddi.png', title)
  print(f'{title}\n\n{table}\n\nwrote {out / "reddi.png"} and {out / "reddi.md"}')


def _reproduce(args: argparse.Namespace) -> None:
  only = args.only or list(EXPERIMENT_NAMES)
  # Before JAX is imported: every experiment plots and shows progress, and the conv net's data is mnist1d's.
  _require_demo_extra('matplotlib', 'tqdm', *(['mnist1d'] if 'conv' in only else []))
  from expectigrad.cli import reproduce  # pylint: disable=import-outside-toplevel
  config = reproduce.CONFIGS['full' if args.full else 'default']
  reproduce.run_reproduce(_output_dir(args.out), config, args.seed, only, progress=not args.no_progress)


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
  from expectigrad.cli import bench  # pylint: disable=import-outside-toplevel
  workloads = bench.import_benchmarks().WORKLOADS
  unknown = sorted(set(args.size) - set(workloads))
  if unknown:   # checked here because the workloads are defined by the checkout's benchmarks
    parser.error(f'argument --size: invalid choice(s) {unknown} (choose from {sorted(workloads)})')
  chosen = list(bench.BENCH_MODULES) if args.framework == 'all' else [args.framework]
  print(bench.bench_table(bench.run_benchmarks(chosen, args.size, args.rounds)))


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
  """The top-level parser and the subcommand parsers by name."""
  parser = argparse.ArgumentParser(
      prog='expectigrad',
      description="Expectigrad (Daley & Amato, arXiv:2010.01356) from the command line: reproduce the "
                  "paper's claims, train a demo MLP against Adam, AMSGrad and SGD, run Reddi et al.'s "
                  'problem, or time the optimizer steps.')
  # Not required here: main() reports unknown flags before a missing command.
  commands = parser.add_subparsers(dest='command', metavar='{demo,reddi,bench,reproduce}')

  demo = commands.add_parser(
      'demo', help='train a small MLP with Expectigrad, Adam, AMSGrad and SGD+momentum',
      description='Trains the same MLP, from the same weights on the same batches, with Expectigrad, '
                  'Adam, AMSGrad and SGD with momentum; prints a table and writes a PNG of the curves.')
  demo.add_argument('--framework', choices=[*frameworks_lib.FRAMEWORKS, 'all'], default='jax',
                    help="'all' runs every installed framework (default: jax)")
  demo.add_argument('--dataset', choices=DATASETS, default='digits',
                    help="scikit-learn's bundled digits, or MNIST-1D generated offline (default: digits)")
  demo.add_argument('--steps', type=_count(DEMO_STEP_LIMIT), default=DEFAULT_STEPS, metavar='N',
                    help=f'training steps per optimizer, at most {DEMO_STEP_LIMIT[0]} (default: {DEFAULT_STEPS})')
  demo.add_argument('--out', type=pathlib.Path, default=pathlib.Path('expectigrad-out'), metavar='DIR',
                    help='directory for the PNG and the table (default: ./expectigrad-out)')
  demo.add_argument('--seed', type=_seed, default=0, metavar='S',
                    help='seeds split, weights and batches; 0 <= S < 2**32 (default: 0)')
  demo.add_argument('--no-progress', action='store_true', help='hide the progress bar')

  reddi = commands.add_parser(
      'reddi', help="Reddi et al.'s problem: Adam (b1=0, b2=0.1) goes to the worst point, "
                    'Expectigrad to the optimum',
      description='The online problem of Reddi et al. (2018) on which Adam with b1=0, b2=0.1 (the '
                  "paper's failing setting) converges to the worst point x = +1; Expectigrad, with its "
                  'defaults, converges to the optimum x = -1. Both step 0.5/sqrt(t). Writes a PNG of x '
                  'over t.')
  reddi.add_argument('--steps', type=_count(REDDI_STEP_LIMIT), default=3000, metavar='N',
                     help=f'online rounds, at most {REDDI_STEP_LIMIT[0]} (default: 3000)')
  reddi.add_argument('--out', type=pathlib.Path, default=pathlib.Path('expectigrad-out'), metavar='DIR',
                     help='directory for the PNG and the table (default: ./expectigrad-out)')

  bench = commands.add_parser(
      'bench', help='optimizer step times against each framework\'s Adam, and the memory roofline',
      description='Runs the benchmarks/ scripts of a source checkout and prints one table of step times, '
                  'ratios to each framework\'s Adam, and the fraction of the memory-bandwidth roofline.')
  bench.add_argument('--framework', choices=['jax', 'torch', 'tf', 'all'], default='all',
                     help="'tf' times TF1 and Keras; 'all' skips what is not installed (default: all)")
  bench.add_argument('--size', nargs='+', default=['W1', 'W2'], metavar='WORKLOAD',
                     help='W1: one 16.8M-element tensor; W2: ResNet-18 shapes (default: W1 W2)')
  bench.add_argument('--rounds', type=_count(ROUND_LIMIT), default=None, metavar='N',
                     help=f"interleaved timing rounds, at most {ROUND_LIMIT[0]} (default: each script's own)")
  reproduce = commands.add_parser(
      'reproduce', help="the evidence for and against Expectigrad, in minutes on a CPU: PNG figures and results.md",
      description="Reruns the paper's claims and tests the README's in JAX: Reddi et al.'s section 3 problem "
                  'swept over C and beta2, its section 5 online and stochastic problems over seeds, a drifting '
                  'problem, a noisy quadratic, sparse embeddings, a byte-level language model on the standard '
                  "library's source, a conv net on MNIST-1D, and the ablation grid. Every optimizer is tuned "
                  'on validation data from one learning-rate grid and compared on test data over paired seeds. '
                  'Writes one PNG per experiment and results.md (every number from this run); the default '
                  'sizes take a few minutes on 2 CPU cores.')
  reproduce.add_argument('--full', action='store_true',
                         help=f'larger runs, sized for a GPU: more rounds and steps, {FULL_SEEDS} seeds, a '
                              'finer and wider learning-rate grid, a larger vocabulary, a bigger language model '
                              'and conv net')
  reproduce.add_argument('--only', nargs='+', choices=EXPERIMENT_NAMES, metavar='EXPERIMENT',
                         help=f'run only these, from {", ".join(EXPERIMENT_NAMES)} (default: all)')
  reproduce.add_argument('--out', type=pathlib.Path, default=pathlib.Path('expectigrad-out/reproduce'),
                         metavar='DIR', help='directory for the PNGs and results.md '
                                             '(default: ./expectigrad-out/reproduce)')
  reproduce.add_argument('--seed', type=_seed, default=0, metavar='S',
                         help='the first seed of every experiment (S, S+1, ...); 0 <= S < 2**32 (default: 0)')
  reproduce.add_argument('--no-progress', action='store_true', help='hide the progress bars')
  return parser, {'demo': demo, 'reddi': reddi, 'bench': bench, 'reproduce': reproduce}


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status.

  Args:
    argv: the arguments after the program name (default: ``sys.argv[1:]``).

  Returns:
    0 on success, 2 for a value that cannot be used (a framework that is
    not installed, ...), 1 for a run that fails, 130 on Ctrl-C (argparse
    exits with 2 itself on bad flags).
  """
  parser, subparsers = build_parser()
  args, unknown = parser.parse_known_args(argv)
  if unknown:  # named even without a command: `expectigrad --bogus`
    parser.error(f'unrecognized arguments: {" ".join(unknown)}')
  if args.command is None:
    parser.error('the following arguments are required: {demo,reddi,bench,reproduce}')
  try:
    if args.command == 'demo':
      _demo(args)
    elif args.command == 'reddi':
      _reddi(args)
    elif args.command == 'reproduce':
      _reproduce(args)
    else:
      _bench(args, subparsers['bench'])
  except CommandError as error:
    print(f'expectigrad {args.command}: error: {error}', file=sys.stderr)
    return error.status
  except KeyboardInterrupt:
    print('interrupted', file=sys.stderr)
    return 130
  return 0
