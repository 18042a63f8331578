"""`state/metrics.prom`: the daemon's figures in the Prometheus text format, for node_exporter's
textfile collector (`--collector.textfile.directory=<spool>/state`).

The text is prometheus_client's own writer (`generate_latest` over a registry of this daemon's
families: escaping, `_total`/`_bucket` names and number formats are the library's), replaced
atomically so the collector never reads half a file, every few seconds and at each job's end.
Samples carry no timestamps (the collector refuses them). Every series has a `device` label, so
daemons that share one spool (one per GPU, each writing its own `metrics.<device>.prom`) never
collide in the collector. Counters start at zero when the daemon starts;
`dgx_music_start_time_seconds` tells Prometheus' rate() about the reset. Names follow
Prometheus' conventions: base units in the name (`_seconds`, `_bytes`), `_ratio` for the
unitless real-time factor.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from daemon.core.fsio import atomic_write_bytes

PREFIX = "dgx_music_"
INTERVAL_S = 5.0
SECONDS_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
RTF_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def metrics_file_name(device: str) -> str:
    """`metrics.prom`, or `metrics.cuda1.prom` for a daemon pinned to one GPU (dgx-music@1)."""
    if re.fullmatch(r"cuda:\d+", device):
        return f"metrics.{device.replace(':', '')}.prom"
    return "metrics.prom"


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, v: float) -> None:
        if not math.isfinite(v):
            return
        i = bisect.bisect_left(self.buckets, v)  # `le` is inclusive
        for j in range(i, len(self.counts)):
            self.counts[j] += 1
        self.total += v
        self.n += 1

    def add_to(self, fam: HistogramMetricFamily, label_values: list[str]) -> None:
        buckets = [(repr(float(b)), float(c)) for b, c in zip(self.buckets, self.counts)]
        fam.add_metric(label_values, [*buckets, ("+Inf", float(self.n))], self.total)


def _by_family(
    hists: Mapping[str, Histogram],
    buckets: tuple[float, ...],
    name: str,
    help_text: str,
    dev: Mapping[str, str],
) -> HistogramMetricFamily:
    """One histogram family with a `family` label (musicgen's empty one before any job)."""
    fam = HistogramMetricFamily(name, help_text, labels=[*dev, "family"])
    for family, h in sorted((hists or {"musicgen": Histogram(buckets)}).items()):
        h.add_to(fam, [*dev.values(), family])
    return fam


@dataclass(frozen=True)
class Gauges:
    """What the service knows at the moment of writing."""

    queue_length: int
    jobs_running: int
    models: Mapping[str, bool]  # configured name -> resident now
    model_load_s: Mapping[str, float]
    gpu_allocated_bytes: int = 0
    gpu_reserved_bytes: int = 0
    up: bool = True


class Metrics:
    """Counters and histograms fed with each outcome; `render()` makes the exposition text."""

    def __init__(self, *, version: str, device: str, hostname: str, start_time: float | None = None) -> None:
        self.version = version
        self.device = device
        self.hostname = hostname
        self.start_time = time.time() if start_time is None else start_time
        self._lock = threading.Lock()
        self.jobs: dict[tuple[str, str], int] = {("completed", ""): 0}
        # Per model family (musicgen, ace-step): their speeds differ by orders of magnitude.
        self.generation_s: dict[str, Histogram] = {}
        self.job_s: dict[str, Histogram] = {}
        self.rtf: dict[str, Histogram] = {}
        self.audio_by_family: dict[str, float] = {}
        self.audio_s = 0.0
        self.generate_s_sum = 0.0

    def observe(self, entry: Mapping[str, Any], sidecar: Mapping[str, Any] | None) -> None:
        """One outcome: the state/recent.json entry and its sidecar (None if unreadable)."""
        status = str(entry.get("status") or "failed")
        error = "" if status == "completed" else str(entry.get("error") or "unknown")
        with self._lock:
            self.jobs[(status, error)] = self.jobs.get((status, error), 0) + 1
            if status != "completed" or not sidecar:
                return
            timings = sidecar.get("timings") or {}
            gen = float(timings.get("generate_s") or 0.0)
            model = sidecar.get("model") or {}
            family = str(model.get("family") or "musicgen") if isinstance(model, dict) else "musicgen"
            self.generation_s.setdefault(family, Histogram(SECONDS_BUCKETS)).observe(gen)
            self.job_s.setdefault(family, Histogram(SECONDS_BUCKETS)).observe(
                float(timings.get("total_s") or 0.0)
            )
            self.rtf.setdefault(family, Histogram(RTF_BUCKETS)).observe(float(sidecar.get("rtf") or 0.0))
            audio = sum(float(o.get("duration_s") or 0.0) for o in sidecar.get("outputs") or [])
            self.audio_by_family[family] = self.audio_by_family.get(family, 0.0) + audio
            self.audio_s += audio
            self.generate_s_sum += gen

    def seconds_per_audio_second(self) -> float | None:
        """Observed generate seconds per audio second (the queue's ETA); None before any job."""
        with self._lock:
            return self.generate_s_sum / self.audio_s if self.audio_s > 0 else None

    def families(self, g: Gauges) -> list[Metric]:
        """Every family of the file, for the text writer."""
        p, dev = PREFIX, {"device": self.device}

        def gauge(name: str, help_text: str, rows: list[tuple[dict[str, str], float]]) -> GaugeMetricFamily:
            keys = list(rows[0][0]) if rows else list(dev)
            fam = GaugeMetricFamily(p + name, help_text, labels=keys)
            for labels, value in rows:
                fam.add_metric(list(labels.values()), value)
            return fam

        with self._lock:
            jobs = CounterMetricFamily(
                p + "jobs",
                "Jobs finished since the daemon started, by outcome and error type.",
                labels=["device", "outcome", "error_type"],
            )
            for (outcome, error), n in sorted(self.jobs.items()):
                jobs.add_metric([self.device, outcome, error], n)
            audio = CounterMetricFamily(
                p + "audio_seconds",
                "Seconds of audio produced (all variations), by model family.",
                labels=["device", "family"],
            )
            for fam_name, seconds in sorted((self.audio_by_family or {"musicgen": 0.0}).items()):
                audio.add_metric([self.device, fam_name], round(seconds, 3))
            out: list[Metric] = [
                jobs,
                _by_family(
                    self.generation_s,
                    SECONDS_BUCKETS,
                    p + "generation_seconds",
                    "Generation (decode) seconds per completed job, by model family.",
                    dev,
                ),
                _by_family(
                    self.job_s,
                    SECONDS_BUCKETS,
                    p + "job_seconds",
                    "Seconds from pickup to the result on disk, per completed job, by model family.",
                    dev,
                ),
                _by_family(
                    self.rtf,
                    RTF_BUCKETS,
                    p + "rtf_ratio",
                    "Real-time factor per completed job: generate seconds over audio seconds (below 1 is "
                    "faster than real time), by model family.",
                    dev,
                ),
                audio,
            ]
        loaded = [({**dev, "model": m}, float(v)) for m, v in sorted(g.models.items())]
        out += [
            gauge(
                "up",
                "1 while the daemon serves the spool; 0 in the file a stopped daemon leaves.",
                [(dev, float(g.up))],
            ),
            gauge("queue_length", "Jobs waiting in this daemon's queue.", [(dev, g.queue_length)]),
            gauge(
                "jobs_running",
                "Jobs being generated now (a decode batch counts each job).",
                [(dev, g.jobs_running)],
            ),
            gauge(
                "model_loaded", "1 when the configured model is resident (0 once the daemon stopped).", loaded
            ),
            gauge(
                "model_load_seconds",
                "Seconds the last load of the model took.",
                [({**dev, "model": m}, round(v, 3)) for m, v in sorted(g.model_load_s.items())],
            ),
            gauge(
                "gpu_memory_bytes",
                "Accelerator memory held by the daemon's torch allocator (0 on CPU).",
                [
                    ({**dev, "kind": "allocated"}, g.gpu_allocated_bytes),
                    ({**dev, "kind": "reserved"}, g.gpu_reserved_bytes),
                ],
            ),
            gauge(
                "start_time_seconds",
                "When the daemon started, UNIX time.",
                [(dev, round(self.start_time, 3))],
            ),
            gauge(
                "info",
                "The daemon's version and host (always 1).",
                [({**dev, "version": self.version, "hostname": self.hostname}, 1.0)],
            ),
        ]
        return out

    def render(self, g: Gauges) -> str:
        """The exposition text, written by prometheus_client."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(self.families(g)))
        return generate_latest(registry).decode("utf-8")


class _Snapshot:
    """A collector that yields families made already (one render's worth)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def gpu_memory(device: str) -> tuple[int, int]:
    """(allocated, reserved) bytes on `device`; zeros on CPU or before torch is imported."""
    torch = sys.modules.get("torch")
    if torch is None or not device.startswith("cuda"):
        return 0, 0
    try:
        if not torch.cuda.is_available():
            return 0, 0
        return int(torch.cuda.memory_allocated(device)), int(torch.cuda.memory_reserved(device))
    except Exception:  # a metrics write must never take the daemon down
        return 0, 0


def read_sidecar(path: str | Path | None) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        body = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def write_metrics(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
