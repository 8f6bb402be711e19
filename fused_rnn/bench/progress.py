"""A progress bar with an ETA on stderr, and the printing of results around it: on a terminal the
bar is redrawn in place and results printed above it; in a log, one line per step."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def _clock(seconds: float) -> str:
    """seconds -> "1m05s" (or "42s")."""
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """`advance(label)` after each of `total` steps; `print(text)` for results (stdout);
    `close()` at the end. The ETA is the mean time per step so far times the steps left."""

    WIDTH = 24

    def __init__(self, total: int, stream: Optional[TextIO] = None, out: Optional[TextIO] = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.out = out if out is not None else sys.stdout
        self.interactive = self.stream.isatty()
        self.start = time.perf_counter()
        self.line = ""

    def render(self, label: str) -> str:
        filled = self.WIDTH * self.done // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else None
        eta_text = "ETA " + (_clock(eta) if eta is not None else "?")
        return f"[{bar}] {self.done}/{self.total} {_clock(elapsed):>6} {eta_text:>10}  {label}"

    def advance(self, label: str = "") -> None:
        self.done = min(self.done + 1, self.total)
        self.line = self.render(label)
        if self.interactive:
            self.stream.write("\r\033[K" + self.line)
        else:
            self.stream.write(self.line + "\n")
        self.stream.flush()

    def print(self, text: str) -> None:
        """Results on stdout, above the bar (which is redrawn under them on a terminal)."""
        if self.interactive and self.line:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.out.write(text + "\n")
        self.out.flush()
        if self.interactive and self.line:
            self.stream.write(self.line)
            self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()
