"""A one-line progress bar on stderr (only when stderr is a terminal; plain lines otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, label: str, *, stream: TextIO | None = None, width: int = 30, min_interval_s: float = 0.1) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self.min_interval_s = min_interval_s if self.tty else 5.0
        self._last = 0.0
        self._t0 = time.monotonic()
        self._shown = False

    def update(self, fraction: float, note: str = "") -> None:
        now = time.monotonic()
        if now - self._last < self.min_interval_s and fraction < 1.0:
            return
        self._last = now
        fraction = min(1.0, max(0.0, fraction))
        elapsed = now - self._t0
        eta = f" eta {elapsed * (1 - fraction) / fraction:5.1f}s" if 0 < fraction < 1 else ""
        if self.tty:
            filled = int(self.width * fraction)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {fraction * 100:5.1f}%{eta} {note}\x1b[K")
        else:
            self.stream.write(f"{self.label}: {fraction * 100:5.1f}%{eta} {note}\n")
        self.stream.flush()
        self._shown = True

    def close(self, final: str = "") -> None:
        if self.tty and self._shown:
            self.stream.write("\r\x1b[K")
        if final:
            self.stream.write(final + "\n")
        self.stream.flush()
