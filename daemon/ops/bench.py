"""The benchmark: clips of 4, 8, 16 and 30 s, generation time, RTF, peak memory, and a verdict.

Verdict (for the 16 s clip): EXCELLENT under 30 s, ACCEPTABLE 30-60 s, BLOCKER over
60 s. RTF everywhere is generation seconds per second of audio produced (batch rows included).
`bench_backend` times the engine's decode loop: the same prompt and seed, several durations, one
row each (`dgx-music bench --compare` is `daemon.ops.decodebench`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from daemon.core.messages import Progress, setup_summary
from daemon.engine.model import MusicEngine
from daemon.ops.progressbar import ProgressBar as Bar

DEFAULT_DURATIONS: tuple[float, ...] = (4.0, 8.0, 16.0, 30.0)
VERDICT_DURATION_S = 16.0
EXCELLENT_BELOW_S = 30.0
BLOCKER_ABOVE_S = 60.0
BENCH_PROMPT = "upbeat electronic track with punchy drums, warm bass and a bright synth lead, 120 bpm"
BENCH_SEED = 1234


@dataclass(frozen=True)
class BenchRow:
    engine: str  # "transformers" | "dgx-music"
    model: str
    batch: int
    duration_s: float
    gen_s: float
    rtf: float  # gen_s / (duration_s * batch)
    peak_memory_bytes: int
    steps: int = 0  # decoding steps of the run
    ms_per_step: float = 0.0

    @property
    def audio_s_per_s(self) -> float:
        return (self.duration_s * self.batch) / self.gen_s if self.gen_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["audio_s_per_s"] = self.audio_s_per_s
        return d


@dataclass(frozen=True)
class Verdict:
    label: str  # EXCELLENT | ACCEPTABLE | BLOCKER
    gen_s_16: float  # generation seconds for a 16 s clip (measured or estimated)
    estimated: bool  # True when 16 s was not benchmarked and the figure is scaled from the longest clip

    @property
    def blocker(self) -> bool:
        return self.label == "BLOCKER"


@dataclass
class BenchReport:
    model: dict[str, Any]
    device: str
    rows: list[BenchRow] = field(default_factory=list)
    verdict: Verdict | None = None
    gpu: dict[str, Any] | None = None
    memory_budget_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "device": self.device,
            "gpu": self.gpu,
            "memory_budget_bytes": self.memory_budget_bytes,
            "rows": [r.as_dict() for r in self.rows],
            "verdict": asdict(self.verdict) if self.verdict else None,
        }


def verdict_for(gen_s_16: float, *, estimated: bool = False) -> Verdict:
    """The verdict's thresholds on the 16 s clip's generation time."""
    if gen_s_16 < EXCELLENT_BELOW_S:
        label = "EXCELLENT"
    elif gen_s_16 <= BLOCKER_ABOVE_S:
        label = "ACCEPTABLE"
    else:
        label = "BLOCKER"
    return Verdict(label=label, gen_s_16=gen_s_16, estimated=estimated)


def verdict_from_rows(rows: Sequence[BenchRow]) -> Verdict | None:
    """Verdict from the 16 s row, or scaled by RTF from the longest clip when 16 s was not run."""
    if not rows:
        return None
    exact = [r for r in rows if abs(r.duration_s - VERDICT_DURATION_S) < 1e-6 and r.batch == 1]
    if exact:
        return verdict_for(exact[0].gen_s)
    longest = max(rows, key=lambda r: r.duration_s)
    return verdict_for(longest.gen_s / longest.duration_s * VERDICT_DURATION_S, estimated=True)


def exit_code(report: BenchReport) -> int:
    """0, or 1 when the verdict is BLOCKER (what `bench` exits with)."""
    return 1 if report.verdict is not None and report.verdict.blocker else 0


def engine_label(backend_name: str) -> str:
    return "dgx-music" if backend_name == "dgx" else backend_name


def bench_backend(
    engine: MusicEngine,
    durations: Sequence[float],
    *,
    batch: int = 1,
    prompt: str = BENCH_PROMPT,
    seed: int = BENCH_SEED,
    progress: Callable[[float, Progress], None] | None = None,
) -> list[BenchRow]:
    """One row per duration with the engine's decode loop on the loaded model (the first preceded
    by nothing but the load-time warm-up)."""
    from daemon.core.messages import GenerationRequest

    info = engine.load_model()
    rows: list[BenchRow] = []
    name = engine_label(info.backend)
    for duration in durations:
        steps = [0]

        def on_progress(p: Progress, duration: float = duration) -> None:
            steps[0] = p.frames_done
            if progress is not None:
                progress(duration, p)

        req = GenerationRequest(prompt, float(duration), count=batch, seed=seed)
        t0 = time.perf_counter()
        (result,) = engine.generate([req], progress=on_progress)
        gen_s = time.perf_counter() - t0
        rows.append(
            BenchRow(
                engine=name,
                model=info.name,
                batch=batch,
                duration_s=float(duration),
                gen_s=gen_s,
                rtf=gen_s / (float(duration) * batch),
                peak_memory_bytes=result.peak_memory_bytes,
                steps=steps[0],
                ms_per_step=1000.0 * gen_s / steps[0] if steps[0] else 0.0,
            )
        )
    return rows


def run_benchmark(
    engine: MusicEngine,
    durations: Sequence[float] = DEFAULT_DURATIONS,
    *,
    batch: int = 1,
    progress: Callable[[float, Progress], None] | None = None,
) -> BenchReport:
    """The benchmark on the engine's model and decode loop."""
    from daemon.engine.devices import gpu_info

    info = engine.load_model()
    rows = bench_backend(engine, durations, batch=batch, progress=progress)
    gpu = None
    if info.device.startswith("cuda"):
        g = gpu_info()
        gpu = asdict(g) if g is not None else None
    return BenchReport(
        model=info.sidecar_fields()
        | {
            "load_s": info.load_s,
            "sample_rate": info.sample_rate,
            "frame_rate": info.frame_rate,
            "backend": info.backend,
        },
        device=info.device,
        rows=rows,
        verdict=verdict_from_rows(rows),
        gpu=gpu,
        memory_budget_bytes=int(engine.settings.max_memory_gb * 2**30),
    )


class ProgressBar:
    """Progress of each benchmark clip, drawn with the shared `daemon.ops.progressbar` bar."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._bars: dict[float, Bar] = {}

    def __call__(self, duration: float, p: Progress) -> None:
        bar = self._bars.get(duration)
        if bar is None:
            bar = self._bars[duration] = Bar(f"{duration:5.1f} s clip", stream=self.stream)
        if p.frames_done >= p.frames_total:
            bar.close(f"{duration:5.1f} s clip done in {p.elapsed_s:.2f} s")
        else:
            bar.update(p.fraction, f"{p.elapsed_s:6.1f} s")


def format_report(report: BenchReport) -> str:
    m = report.model
    lines = [
        f"model {m.get('name')} ({m.get('source')}, {m.get('parameters', 0) / 1e6:.1f}M parameters) "
        f"on {report.device} {m.get('dtype')}, decoder "
        + (setup_summary(m["setup"]) if m.get("setup") else str(m.get("backend"))),
    ]
    if report.gpu:
        g = report.gpu
        lines.append(
            f"GPU {g.get('name')} ({g.get('compute_capability')}), "
            f"{g.get('total_memory_bytes', 0) / 2**30:.1f} GiB"
        )
    lines.append(f"{'clip':>7} {'batch':>5} {'gen s':>8} {'RTF':>7} {'ms/step':>8} {'peak MiB':>9}")
    for r in report.rows:
        lines.append(
            f"{r.duration_s:6.1f}s {r.batch:5d} {r.gen_s:8.2f} {r.rtf:7.3f} {r.ms_per_step:8.2f} "
            f"{r.peak_memory_bytes / 2**20:9.0f}"
        )
    if report.memory_budget_bytes and report.rows:
        peak = max(r.peak_memory_bytes for r in report.rows)
        within = "within" if peak <= report.memory_budget_bytes else "OVER"
        lines.append(
            f"peak memory {peak / 2**30:.2f} GiB, "
            f"{within} the {report.memory_budget_bytes / 2**30:.0f} GiB budget"
        )
    v = report.verdict
    if v is not None:
        how = "estimated from the longest clip" if v.estimated else "measured"
        lines.append(
            f"verdict: {v.label} (16 s clip in {v.gen_s_16:.2f} s, {how}; "
            f"EXCELLENT < {EXCELLENT_BELOW_S:.0f} s, BLOCKER > {BLOCKER_ABOVE_S:.0f} s)"
        )
    return "\n".join(lines)
