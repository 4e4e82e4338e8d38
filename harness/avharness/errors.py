"""User-facing errors: one line that says what, where and what to do; the CLI exits 2."""


class UserError(Exception):
    """A mistake in the user's input (suite, command line, files), not a bug in avharness.

    The CLI prints ``str(error)`` on one line with no traceback and exits with status 2.
    Messages should name the place (file, key path, line) and say how to fix it.
    """


class NumericalError(UserError):
    """A model or attack produced NaN/inf where numbers were expected."""
