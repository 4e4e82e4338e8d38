"""User-facing errors: one line that says what, where and what to do; the CLI exits 2."""


class UserError(Exception):
    """A mistake in the user's input (suite, command line, files), not a bug in avharness.

    The CLI prints ``str(error)`` on one line with no traceback and exits with status 2.
    Messages should name the place (file, key path, line) and say how to fix it.
    """


class NumericalError(UserError):
    """A model or attack produced NaN/inf where numbers were expected."""


class PluginError(Exception):
    """A plugin broke its contract or raised: the CLI prints one line and exits with status 3.

    The line names the plugin (kind and name), its distribution and version, where it happened (a
    cell or training unit), what was expected and what came back. ``--traceback`` shows the chain.
    """

    def __init__(self, message: str, *, plugin: str = "", dist: str = "", version: str = "", where: str = ""):
        self.plugin, self.dist, self.version, self.where = plugin, dist, version, where
        origin = f"{plugin} (from {dist or '?'} {version or '?'})" if plugin else ""
        parts = [p for p in (origin, where) if p]
        super().__init__((" in ".join(parts) + ": " if parts else "") + message)
