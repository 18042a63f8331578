"""What the service does after each outcome: refresh outbox/index.html (debounced) and
state/metrics.prom, and the queue's ETA estimates. The stages only record outcomes
(`state.record_outcome`); this listens to them in-process and does the work on the main loop,
so neither the worker nor the writer thread ever waits for a page or a metrics file.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from queue import Empty, SimpleQueue
from typing import Any

from daemon import __version__
from daemon.core.config import Settings
from daemon.outbox.page import PageRefresher
from daemon.outbox.retention import find_expired, remove_expired
from daemon.service.metrics import (
    INTERVAL_S,
    Gauges,
    Metrics,
    gpu_memory,
    metrics_file_name,
    read_sidecar,
    write_metrics,
)
from daemon.spool import state

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 600.0
# Job fields that name a file a job will read (an edit names it as its `source`).
REFERENCE_FIELDS = ("continue_from", "melody", "repaint", "cover", "extract", "lego", "complete")


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
        self._last_retention: float | None = None
        self._load_s: dict[str, float] = {}

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

    def gauges(self, engine: Any, queue: Any, worker: Any) -> Gauges:
        """The figures of the moment, from the service's engine, queue and worker."""
        info = engine.info
        if info is not None:
            self._load_s[info.name] = info.load_s  # kept after an idle unload
        allocated, reserved = gpu_memory(info.device) if info is not None else (0, 0)
        return Gauges(
            queue_length=len(queue),
            jobs_running=len(worker.current) if worker.busy else 0,
            models={m: info is not None and info.name == m for m in self.settings.models},
            model_load_s=dict(self._load_s),
            gpu_allocated_bytes=allocated,
            gpu_reserved_bytes=reserved,
        )

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
            self.metrics.observe(
                entry, read_sidecar(entry.get("path")) if entry.get("status") == "completed" else None
            )
        if seen and self.page is not None:
            self.page.mark()
        if seen or self._last_metrics is None or now - self._last_metrics >= self.interval_s:
            self._last_metrics = now
            self._guard("metrics", lambda: write_metrics(self.metrics_path, self.metrics.render(gauges())))
        if self.page is not None:
            page = self.page
            self._guard("page", lambda: page.tick(now))

    def retention(self, in_flight: Callable[[], Iterable[Any]], now: float | None = None) -> int:
        """Every RETENTION_INTERVAL_S (and first at start): remove results older than
        `retention_days`, except what jobs in flight hold or read. Returns how many went."""
        s = self.settings
        now = time.monotonic() if now is None else now
        if s.retention_days is None or (
            self._last_retention is not None and now - self._last_retention < RETENTION_INTERVAL_S
        ):
            return 0
        self._last_retention = now
        try:
            reserved = [n for n in os.listdir(s.state_dir / "reserved") if not n.startswith(".")]
        except FileNotFoundError:
            reserved = []
        protected = []
        for job in in_flight():
            for name in REFERENCE_FIELDS:
                ref = getattr(job, name, None)
                ref = getattr(ref, "path", ref)  # a reference may be a model with a path
                ref = getattr(ref, "source", ref)  # or an edit of a source
                if isinstance(ref, str) and ref.startswith("outbox/"):
                    protected.append(ref[len("outbox/") :])
        expired = find_expired(
            s.outbox,
            s.failed,
            max_age_days=s.retention_days,
            now=time.time(),
            reserved=reserved,
            protected=protected,
        )
        n = remove_expired(expired)
        if n and self.page is not None:
            self.page.mark()
        return n

    def close(self, gauges: Callable[[], Gauges]) -> None:
        """Stopping: the last outcomes on the page, and `up 0` in the file left behind."""
        self.tick(gauges)
        if self.page is not None:
            page = self.page
            self._guard("page", lambda: page.flush())
        last = gauges()
        # The process is ending: no model stays resident, whatever it held a moment ago.
        models = {name: False for name in last.models}
        stopped = Gauges(**{**last.__dict__, "up": False, "jobs_running": 0, "models": models})
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


def queue_snapshot(
    settings: Settings, queue: Any, worker: Any, instance: str, seconds_per_audio_s: float | None
) -> list[dict[str, Any]]:
    """The daemon's queue for state/queue.json: position, id, source file and ETA per entry."""
    items = queue.items()
    audio_s = {q.job_id: q.job.duration * q.job.count for q in items}
    running = state.read_json(state.running_path(settings, instance)) if worker.busy else None
    left = running.get("eta_s") if isinstance(running, dict) else None
    if not worker.busy:
        left = 0.0
    elif left is None and seconds_per_audio_s is not None:  # no progress yet: the batch's estimate
        batch = list(worker.current)
        started = min((j.started_at or time.time() for j in batch), default=time.time())
        left = max(
            0.0,
            seconds_per_audio_s * sum(j.job.duration * j.job.count for j in batch) - (time.time() - started),
        )
    sources = {q.job_id: q.claim.source_name for q in items}
    snap = [{**e, "source_file": sources.get(e["job_id"])} for e in queue.snapshot()]
    return queue_with_eta(snap, audio_s, running_left_s=left, seconds_per_audio_s=seconds_per_audio_s)
