"""Progress on stderr: a tqdm bar on a terminal, one plain line per change otherwise (logs, CI).

The bar shows the ETA it is given (the daemon's estimate) and never makes one of its own, so a
user sees one ETA, not two that disagree.
"""

from __future__ import annotations

import io
import os
import sys
import time
from typing import Any, TextIO

from daemon.core.eta import format_eta

__all__ = ["ProgressBar", "format_eta"]

RESOLUTION = 1000  # bar steps: tqdm counts integers


class ProgressBar:
    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        min_interval_s: float = 0.1,
        plain_interval_s: float = 5.0,
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval_s = min_interval_s
        self.plain_interval_s = plain_interval_s  # a line even without change, now and then
        self._bar: Any = None
        self._last_line = ""
        self._last_state = ""
        self._last_t = 0.0
        self._max = 0.0

    def update(
        self, fraction: float, note: str = "", *, eta_s: float | None = None, status: str = ""
    ) -> None:
        """`note` is shown; `status` (e.g. "queued #3", "running x") is what, off a terminal,
        earns a line of its own when it changes; otherwise a line every plain_interval_s."""
        # Only forward: a caller's estimate that dips (a job between two stages) does not show.
        fraction = self._max = min(1.0, max(self._max, fraction))
        eta = format_eta(eta_s)
        tail = " ".join(p for p in (note, eta) if p)
        if self.tty:
            self._draw(fraction, tail)
            return
        now = time.monotonic()
        changed = status != self._last_state
        if self._last_t and not changed and now - self._last_t < self.plain_interval_s and fraction < 1.0:
            return
        self._last_state, self._last_t = status, now
        line = f"{self.label}: {fraction * 100:5.1f}% {tail}".rstrip()
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = line

    def _draw(self, fraction: float, tail: str) -> None:
        if self._bar is None:
            # A terminal that reports no size (a fresh pty, some serial consoles) has tqdm draw
            # nothing at all (0 columns, no row to draw on): 80 x 24 then.
            sized = _columns(self.stream) > 0
            self._bar = _tail_bar()(
                tail=tail,  # the first frame is drawn by the constructor: with its text already
                initial=int(fraction * RESOLUTION),
                total=RESOLUTION,
                desc=self.label,
                file=self.stream,
                leave=False,
                dynamic_ncols=sized,
                ncols=None if sized else 80,
                nrows=None if sized else 24,
                mininterval=self.min_interval_s,
                bar_format="{desc}: {percentage:5.1f}%|{bar}| {tail}",
            )
        bar = self._bar
        changed = tail != bar.tail
        bar.tail = tail
        step = int(fraction * RESOLUTION) - bar.n
        if step > 0:
            bar.update(step)
        elif changed:
            bar.refresh()  # a new stage with the same percentage still shows

    def close(self, final: str = "") -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if final:
            self.stream.write(final + "\n")
        self.stream.flush()


def _tail_bar() -> Any:
    """tqdm with a `{tail}` field: its own `{postfix}` starts with ", " (it is meant to follow
    tqdm's counters), which drew as "| , 0/1 done" after the bar."""
    from tqdm import tqdm  # a transformers dependency too; imported only for a terminal

    class TailBar(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, tail: str = "", **kwargs: Any) -> None:
            self.tail = tail
            super().__init__(*args, **kwargs)

        @property
        def format_dict(self) -> dict[str, Any]:
            return {**super().format_dict, "tail": self.tail}

    return TailBar


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return 0
