"""``python -m expectigrad``: the same command line as the ``expectigrad`` script."""

from expectigrad.cli.main import main

raise SystemExit(main())
