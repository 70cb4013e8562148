"""User-facing errors: the CLI and the app print their message, never a traceback."""


class ViscnnError(Exception):
    """A problem with the user's input (model spec, weights, target string, file...)."""


class UnsupportedOperationError(ViscnnError):
    """The graph builder met an operation it cannot map channel by channel."""
