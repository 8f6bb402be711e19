"""A progress bar on stderr: redrawn in place on a terminal, one line per step otherwise (logs)."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """`advance(label)` after each of `total` steps; `close()` at the end."""

    WIDTH = 24

    def __init__(self, total: int, stream: Optional[TextIO] = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty()
        self.start = time.perf_counter()

    def render(self, label: str) -> str:
        filled = self.WIDTH * self.done // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        elapsed = time.perf_counter() - self.start
        return f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s {label}"

    def advance(self, label: str = "") -> None:
        self.done = min(self.done + 1, self.total)
        line = self.render(label)
        if self.interactive:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()
