"""The one error type the command line reports as a message, not a traceback."""


class CommandError(Exception):
  """A request this machine cannot serve (missing framework, bad output path, ...)."""
