"""``expectigrad reproduce``: the paper's claims, rerun from scratch in minutes on a CPU.

One module per experiment, each with ``TITLE``, ``run(context)``,
``section(result)`` (Markdown) and ``plot(result, path)``:

- :mod:`.reddi_sweep`: Reddi et al. (2018) section 3, over C and Adam's beta2.
- :mod:`.online`: Reddi et al. section 5, the online and stochastic problems, 1e6+ rounds.
- :mod:`.lr_robustness`: final loss and test accuracy over a log grid of learning rates.
- :mod:`.ablations`: arithmetic vs EMA denominator x outer vs inner momentum.

:mod:`.mlp_grid` trains the demo's MLP over (seed, learning rate) lanes for
the last two; :mod:`.runner` runs the chosen experiments and writes
``results.md``. Everything is JAX: ``vmap`` over the grid, ``lax.scan`` over
steps, so each grid is a few compiled calls.
"""

from expectigrad.cli.reproduce.common import DEFAULT, FULL, Config, Context
from expectigrad.cli.reproduce.runner import CONFIGS, EXPERIMENTS, RESULTS, run_reproduce

__all__ = ['CONFIGS', 'DEFAULT', 'EXPERIMENTS', 'FULL', 'RESULTS', 'Config', 'Context', 'run_reproduce']
