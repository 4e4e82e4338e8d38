"""Progress bars (rich) and log lines, on stderr so stdout stays clean for scripts.

On a terminal, long work draws rich bars. When stderr is not a terminal (a CI log, a pipe) or the
run was started from Python (``avharness.run``, e.g. in a notebook), bars would be noise: the
reporter prints plain lines instead: one as each piece of work (a training run, a cell) ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("avharness.run")


class Reporter:
    """``enabled=False``: silent. ``plain``: True for plain lines, False for bars, None (default) for
    bars only when stderr is a terminal."""

    def __init__(self, enabled: bool = True, console: Console | None = None, plain: bool | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.plain = (not self.console.is_terminal) if plain is None else plain
        self.progress = None
        if enabled and not self.plain:
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
        """A log line: through ``logging`` (logger ``avharness.run``) when ``-v`` enabled it, else plain
        or on the progress console, unless the reporter is quiet."""
        if log.isEnabledFor(logging.INFO):
            log.info(msg)
        elif not self.enabled:
            return
        elif self.plain:
            print(msg, file=self.console.file, flush=True)
        else:
            self.console.print(msg, highlight=False, markup=False)

    def task(self, description: str, total: int) -> Callable[..., None]:
        """Start a bar (plain: a line when it completes); returns ``advance(n=1)``. The bar disappears when complete."""
        if not self.enabled:
            return lambda n=1: None
        if self.plain:
            return self._plain_task(description, total)
        if not self._started:  # started on first use, so early user errors print one clean line
            self.progress.start()
            self._started = True
        tid = self.progress.add_task(description, total=total)

        def advance(n: int = 1):
            self.progress.advance(tid, n)
            if self.progress.tasks[self.progress.task_ids.index(tid)].finished:
                self.progress.remove_task(tid)

        return advance

    def _plain_task(self, description: str, total: int):
        state = {"done": 0, "t": time.perf_counter()}

        def advance(n: int = 1):
            before = state["done"]
            state["done"] += n
            if before < total <= state["done"]:
                self.log(f"{description}: done ({total} steps, {time.perf_counter() - state['t']:.1f}s)")

        return advance
