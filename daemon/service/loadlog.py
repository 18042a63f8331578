"""Model loads told as they happen: a large checkpoint takes minutes, and a journal that says
nothing between "starting" and "ready" looks like a hung daemon. Before a load the log names the
model, where it comes from and the device; while it lasts a line now and then says how long it
has taken so far (and the systemd STATUS= line follows); the engine logs the result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

FIRST_NOTE_S = 5.0  # a quick load says nothing more than its start
NOTE_EVERY_S = 15.0


class LoadReporter:
    """The engine, with its `load_model` told in the log; everything else passes through."""

    def __init__(
        self,
        inner: Any,
        on_status: Callable[[str], None],
        *,
        first_note_s: float = FIRST_NOTE_S,
        every_s: float = NOTE_EVERY_S,
    ) -> None:
        self.inner = inner
        self._on_status = on_status
        self._first_note_s = first_note_s
        self._every_s = every_s

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def load_model(self, name: str | None = None, *args: Any, **kwargs: Any) -> Any:
        settings = self.inner.settings
        shown = name or settings.default_model
        spec = settings.models.get(shown)
        source = f" from {spec.source}" if spec is not None else ""
        log.info("loading model %s%s on %s (%s)", shown, source, settings.device, settings.dtype)
        done = threading.Event()
        t0 = time.monotonic()

        def note() -> None:
            wait = self._first_note_s
            while not done.wait(wait):
                took = time.monotonic() - t0
                log.info("still loading model %s: %.0f s so far", shown, took)
                self._on_status(f"loading model {shown} ({took:.0f} s)")
                wait = self._every_s

        notes = threading.Thread(target=note, name="dgx-music-load-notes", daemon=True)
        notes.start()
        try:
            return self.inner.load_model(name, *args, **kwargs)
        finally:
            done.set()
            notes.join()
