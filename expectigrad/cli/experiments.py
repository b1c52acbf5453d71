"""What both the command line and ``expectigrad reproduce`` need to know, without importing JAX.

``main.py`` parses ``--only`` and ``--seed`` from these names and limits
before anything heavy is imported; the experiments read the same values, so
neither imports the other.
"""

SEED_LIMIT = 2**32   # numpy's generators take seeds in [0, 2**32)
# The experiments of ``expectigrad reproduce`` (its ``--only`` choices), in the order they run.
# Ablations come last: they reuse the sparse and language tasks' grids of the same run.
EXPERIMENT_NAMES = ('reddi-sweep', 'online', 'drift', 'quadratic', 'sparse', 'language', 'conv', 'ablations')
DEFAULT_SEEDS = 5   # seeds of the default run
FULL_SEEDS = 8      # seeds of ``reproduce --full``
