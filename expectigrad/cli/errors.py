"""The error types the command line reports as one line, not a traceback."""


class CommandError(Exception):
  """A request this machine cannot serve (no benchmark could run, ...): exit status 1."""

  status = 1


class UsageError(CommandError):
  """A value the command cannot use (a framework or extra that is not installed,
  an output path under a file, ``bench`` outside a source checkout): exit status 2,
  like argparse's own errors."""

  status = 2
