"""Progress reporting that stays readable in a CI log (plain lines when not on a terminal)."""

from __future__ import annotations

import sys
import time

from rich.console import Console

_console = Console(stderr=True, highlight=False, soft_wrap=True)  # a line per unit, unwrapped


class Progress:
    """Counts units of work; on a terminal a live status line, otherwise one line per unit."""

    def __init__(self, title: str, total: int) -> None:
        self.title, self.total, self.done = title, total, 0
        self.start = time.perf_counter()
        self.live = sys.stderr.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        line = f"{self.title} [{self.done}/{self.total}] {what} ({elapsed:.1f} s)"
        if self.live:
            _console.print(line, end="\r" if self.done < self.total else "\n")
        else:
            _console.print(line)
