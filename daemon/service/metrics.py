"""`state/metrics.prom`: the daemon's figures in the Prometheus text format, for node_exporter's
textfile collector (`--collector.textfile.directory=<spool>/state`).

Written by hand (the format is a few lines of text; no runtime dependency), replaced atomically
so the collector never reads half a file, every few seconds and at each job's end. Samples carry
no timestamps (the collector refuses them). Every series has a `device` label, so daemons that
share one spool (one per GPU, each writing its own `metrics.<device>.prom`) never collide in the
collector. Counters start at zero when the daemon starts; `dgx_music_start_time_seconds` tells
Prometheus' rate() about the reset.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def _label_value(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items()) + "}"


def _value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


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

    def lines(self, name: str, labels: Mapping[str, object]) -> Iterable[str]:
        for bound, c in zip(self.buckets, self.counts):
            yield f"{name}_bucket{_labels({**labels, 'le': repr(float(bound))})} {c}"
        yield f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {self.n}"
        yield f"{name}_sum{_labels(labels)} {_value(self.total)}"
        yield f"{name}_count{_labels(labels)} {self.n}"


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
        self.generation_s = Histogram(SECONDS_BUCKETS)
        self.job_s = Histogram(SECONDS_BUCKETS)
        self.rtf = Histogram(RTF_BUCKETS)
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
            self.generation_s.observe(gen)
            self.job_s.observe(float(timings.get("total_s") or 0.0))
            self.rtf.observe(float(sidecar.get("rtf") or 0.0))
            audio = sum(float(o.get("duration_s") or 0.0) for o in sidecar.get("outputs") or [])
            self.audio_s += audio
            self.generate_s_sum += gen

    def seconds_per_audio_second(self) -> float | None:
        """Observed generate seconds per audio second (the queue's ETA); None before any job."""
        with self._lock:
            return self.generate_s_sum / self.audio_s if self.audio_s > 0 else None

    def render(self, g: Gauges) -> str:
        dev = {"device": self.device}
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, lines: Iterable[str]) -> None:
            out.append(f"# HELP {PREFIX}{name} {help_text}")
            out.append(f"# TYPE {PREFIX}{name} {kind}")
            out.extend(lines)

        p = PREFIX
        with self._lock:
            jobs = sorted(self.jobs.items())
            family(
                "jobs_total",
                "counter",
                "Jobs finished since the daemon started, by outcome and error type.",
                (f"{p}jobs_total{_labels({**dev, 'outcome': o, 'error_type': e})} {n}" for (o, e), n in jobs),
            )
            family(
                "generation_seconds",
                "histogram",
                "Generation (decode) seconds per completed job.",
                self.generation_s.lines(f"{p}generation_seconds", dev),
            )
            family(
                "job_seconds",
                "histogram",
                "Seconds from pickup to the result on disk, per completed job.",
                self.job_s.lines(f"{p}job_seconds", dev),
            )
            family(
                "rtf",
                "histogram",
                "Real-time factor per completed job (generate seconds / audio seconds).",
                self.rtf.lines(f"{p}rtf", dev),
            )
            family(
                "audio_seconds_total",
                "counter",
                "Seconds of audio produced (all variations).",
                [f"{p}audio_seconds_total{_labels(dev)} {_value(round(self.audio_s, 3))}"],
            )
        family(
            "up",
            "gauge",
            "1 while the daemon serves the spool; 0 in the file a stopped daemon leaves.",
            [f"{p}up{_labels(dev)} {int(g.up)}"],
        )
        family(
            "queue_length",
            "gauge",
            "Jobs waiting in this daemon's queue.",
            [f"{p}queue_length{_labels(dev)} {g.queue_length}"],
        )
        family(
            "jobs_running",
            "gauge",
            "Jobs being generated now (a decode batch counts each job).",
            [f"{p}jobs_running{_labels(dev)} {g.jobs_running}"],
        )
        family(
            "model_loaded",
            "gauge",
            "1 when the configured model is resident.",
            (f"{p}model_loaded{_labels({**dev, 'model': m})} {int(v)}" for m, v in sorted(g.models.items())),
        )
        family(
            "model_load_seconds",
            "gauge",
            "Seconds the last load of the model took.",
            (
                f"{p}model_load_seconds{_labels({**dev, 'model': m})} {_value(round(v, 3))}"
                for m, v in sorted(g.model_load_s.items())
            ),
        )
        family(
            "gpu_memory_bytes",
            "gauge",
            "Accelerator memory held by the daemon's torch allocator (0 on CPU).",
            [
                f"{p}gpu_memory_bytes{_labels({**dev, 'kind': 'allocated'})} {g.gpu_allocated_bytes}",
                f"{p}gpu_memory_bytes{_labels({**dev, 'kind': 'reserved'})} {g.gpu_reserved_bytes}",
            ],
        )
        family(
            "start_time_seconds",
            "gauge",
            "When the daemon started, UNIX time.",
            [f"{p}start_time_seconds{_labels(dev)} {_value(round(self.start_time, 3))}"],
        )
        family(
            "info",
            "gauge",
            "The daemon's version and host (always 1).",
            [f"{p}info{_labels({**dev, 'version': self.version, 'hostname': self.hostname})} 1"],
        )
        return "\n".join(out) + "\n"


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
