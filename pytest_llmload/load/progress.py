"""A one-line progress display on stderr (cells and requests), shown only on a terminal.

Redrawn at most 5 times a second so that it costs the measuring client nothing worth counting.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Cells done / total, and requests done / total of the running cell, redrawn in place."""

    MIN_INTERVAL_S = 0.2

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = _isatty(self.stream) if enabled is None else enabled
        self.cells_total = 0
        self.cells_done = 0
        self.label = ""
        self.requests_total = 0
        self.requests_done = 0
        self.failed = 0
        self._last_draw = 0.0
        self._drawn = False

    def start_matrix(self, cells: int) -> None:
        self.cells_total, self.cells_done = cells, 0

    def start_cell(self, label: str, requests: int) -> None:
        self.label, self.requests_total, self.requests_done, self.failed = label, requests, 0, 0
        self._draw(force=True)

    def add_done(self, ok: int, failed: int) -> None:
        """Several requests at once (what load workers report)."""
        self.requests_done += ok + failed
        self.failed += failed
        self._draw()

    def end_cell(self) -> None:
        self.cells_done += 1
        self._draw(force=True)

    def close(self) -> None:
        """Leave the terminal on a fresh line."""
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def line(self) -> str:
        cells = f"cell {min(self.cells_done + 1, self.cells_total)}/{self.cells_total} " if self.cells_total else ""
        failed = f", {self.failed} failed" if self.failed else ""
        return f"llmload {cells}{self.label}: {self.requests_done}/{self.requests_total} requests{failed}"

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self.MIN_INTERVAL_S:
            return
        self._last_draw = now
        self.stream.write("\r\x1b[2K" + self.line())
        self.stream.flush()
        self._drawn = True


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
