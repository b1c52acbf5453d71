"""``expectigrad reproduce``: the evidence for and against Expectigrad, rerun from scratch in minutes on a CPU.

One module per experiment, each with ``TITLE``, ``run(context)``,
``section(result)`` (Markdown), ``plot(result, path)`` and, where it compares
optimizers under the protocol, ``claims(result)``:

- :mod:`.reddi_sweep`: Reddi et al. (2018) section 3, over C and Adam's beta2.
- :mod:`.online`: Reddi et al. section 5, the online and stochastic problems, over seeds.
- :mod:`.drift`: tracking a moving optimum through rare large gradients.
- :mod:`.quadratic`: DeepOBS's noisy quadratic.
- :mod:`.sparse`: a click-through-style embedding model, one streaming pass.
- :mod:`.language`: a byte-level transformer on the Python standard library's source.
- :mod:`.conv`: a convolutional net on MNIST-1D.
- :mod:`.ablations`: arithmetic vs EMA denominator x outer vs inner momentum, on the sparse and language tasks.

:mod:`.protocol` is the tuning and comparison protocol and its tables,
:mod:`.grid` trains a model over every (seed, learning rate) lane,
:mod:`.optimizers` holds the compared optimizers, and :mod:`.runner` runs
the chosen experiments and writes ``results.md``. Everything is JAX:
``vmap`` over the grid, ``lax.scan`` over steps, so each grid is a few
compiled calls.
"""

from expectigrad.cli.reproduce.common import DEFAULT, FULL, Config, Context
from expectigrad.cli.reproduce.runner import CONFIGS, EXPERIMENTS, RESULTS, run_reproduce

__all__ = ['CONFIGS', 'DEFAULT', 'EXPERIMENTS', 'FULL', 'RESULTS', 'Config', 'Context', 'run_reproduce']
