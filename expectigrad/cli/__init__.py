"""The ``expectigrad`` command line: ``reproduce``, ``demo``, ``reddi`` and ``bench``.

Entry point: :func:`expectigrad.cli.main.main` (console script ``expectigrad``,
or ``python -m expectigrad``). The subcommands need the ``demo`` extra
(matplotlib, tqdm, scikit-learn, mnist1d); they import it only when they run.
"""
