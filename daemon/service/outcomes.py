"""What the service does after each outcome: refresh outbox/index.html (debounced) and
state/metrics.prom, and the queue's ETA estimates. The stages only record outcomes
(`state.record_outcome`); this listens to them in-process and does the work on the main loop,
so neither the worker nor the writer thread ever waits for a page or a metrics file.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from queue import Empty, SimpleQueue
from typing import Any

from daemon import __version__
from daemon.core.config import Settings
from daemon.outbox.page import PageRefresher
from daemon.service.metrics import INTERVAL_S, Gauges, Metrics, metrics_file_name, read_sidecar, write_metrics

log = logging.getLogger(__name__)


class OutcomeObserver:
    def __init__(self, settings: Settings, *, interval_s: float = INTERVAL_S) -> None:
        self.settings = settings
        self.metrics = Metrics(version=__version__, device=settings.device, hostname=socket.gethostname())
        self.metrics_path = settings.state_dir / metrics_file_name(settings.device)
        self.page: PageRefresher | None = None
        self.reconfigure(settings)
        self.interval_s = interval_s
        self._events: SimpleQueue[dict[str, Any]] = SimpleQueue()
        self._last_metrics: float | None = None
        self._failing: set[str] = set()

    def reconfigure(self, settings: Settings) -> None:
        """Settings changed (SIGHUP): page size, or the page turned off (page_max_jobs 0)."""
        self.settings = settings
        if settings.page_max_jobs <= 0:
            self.page = None
        elif self.page is None:
            self.page = PageRefresher(settings.outbox, settings.failed, max_jobs=settings.page_max_jobs)
            self.page.mark()  # first build: the page shows what is on disk already
        else:
            self.page.max_jobs = settings.page_max_jobs
            self.page.mark()

    def on_outcome(self, entry: Mapping[str, Any]) -> None:
        """Any thread: take note only."""
        self._events.put(dict(entry))

    def tick(self, gauges: Callable[[], Gauges], now: float | None = None) -> None:
        """Main loop: count new outcomes, write the metrics (at a job's end, and every few
        seconds), rewrite the page when due. A failing disk is logged once per outage."""
        now = time.monotonic() if now is None else now
        seen = 0
        while True:
            try:
                entry = self._events.get_nowait()
            except Empty:
                break
            seen += 1
            self.metrics.observe(entry, read_sidecar(entry.get("path")) if entry.get("status") == "completed" else None)
        if seen and self.page is not None:
            self.page.mark()
        if seen or self._last_metrics is None or now - self._last_metrics >= self.interval_s:
            self._last_metrics = now
            self._guard("metrics", lambda: write_metrics(self.metrics_path, self.metrics.render(gauges())))
        if self.page is not None:
            page = self.page
            self._guard("page", lambda: page.tick(now))

    def close(self, gauges: Callable[[], Gauges]) -> None:
        """Stopping: the last outcomes on the page, and `up 0` in the file left behind."""
        self.tick(gauges)
        if self.page is not None:
            page = self.page
            self._guard("page", lambda: page.flush())
        last = gauges()
        stopped = Gauges(**{**last.__dict__, "up": False, "jobs_running": 0})
        self._guard("metrics", lambda: write_metrics(self.metrics_path, self.metrics.render(stopped)))

    def _guard(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except OSError as exc:
            if what not in self._failing:
                where = self.metrics_path if what == "metrics" else self.settings.outbox / "index.html"
                log.warning("cannot write %s (%s); retrying quietly", where, exc.strerror or exc)
            self._failing.add(what)
        else:
            if what in self._failing:
                log.info("%s written again", what)
            self._failing.discard(what)


def queue_with_eta(
    snapshot: Sequence[Mapping[str, Any]],
    audio_s: Mapping[str, float],
    *,
    running_left_s: float | None,
    seconds_per_audio_s: float | None,
) -> list[dict[str, Any]]:
    """The queue snapshot with `eta_s` per entry: seconds until it should be finished, from the
    running job's remaining time and this daemon's measured generate seconds per audio second
    (null until one job has finished here). Jobs that share a decode batch finish sooner."""
    out: list[dict[str, Any]] = []
    ahead = running_left_s
    for e in snapshot:
        entry = dict(e)
        if seconds_per_audio_s is None or ahead is None:
            entry["eta_s"] = None
        else:
            ahead += seconds_per_audio_s * audio_s.get(str(e.get("job_id")), 0.0)
            entry["eta_s"] = round(ahead, 1)
        out.append(entry)
    return out
