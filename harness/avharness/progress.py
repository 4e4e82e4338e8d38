"""Progress bars (rich) and log lines, on stderr so stdout stays clean for scripts."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("avharness.run")


class Reporter:
    def __init__(self, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.progress = None
        if enabled:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=self.console, transient=True,
            )

        self._started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._started:
            self.progress.stop()

    def log(self, msg: str) -> None:
        """A log line: through ``logging`` (logger ``avharness.run``) when ``-v`` enabled it, else on
        the progress console unless the reporter is quiet."""
        if log.isEnabledFor(logging.INFO):
            log.info(msg)
        elif self.enabled:
            self.console.print(msg, highlight=False, markup=False)

    def task(self, description: str, total: int):
        """Start a bar; returns ``advance(n=1)``. The bar disappears when complete."""
        if self.progress is None:
            return lambda n=1: None
        if not self._started:  # started on first use, so early user errors print one clean line
            self.progress.start()
            self._started = True
        tid = self.progress.add_task(description, total=total)

        def advance(n: int = 1):
            self.progress.advance(tid, n)
            if self.progress.tasks[self.progress.task_ids.index(tid)].finished:
                self.progress.remove_task(tid)

        return advance
