"""Side-by-side benchmark of ACE-Step: diffusers' own `AceStepPipeline.__call__` against the
family's render (`daemon.engine.acestep.song.render`) on the same pipeline, inputs, seeds and steps.

Both are timed end to end (text in, 48 kHz audio out), warmed up once per length, then timed
`repeats` times interleaved, who goes first alternating, so that a noisy neighbour hits both
alike; the fastest run counts (`gen_s`; every run's time and their median beside it).
Each row also says whether the two made the same audio (`identical`), which they must.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from daemon.engine.acestep.song import (
    SHIFT,
    SongBatch,
    SongParams,
    SongRow,
    default_guidance,
    default_steps,
    pipeline_kwargs,
    render,
    row_generators,
)
from daemon.ops.decodebench import BENCH_PROMPTS, _peak_memory, _sync

ENGINES = ("diffusers", "dgx-music")

BENCH_LYRICS = (
    "[verse]\nMorning light on the harbour wall\nGulls are singing over it all\n"
    "[chorus]\nHold on, hold on, the tide is turning\nHold on, the lights are burning"
)


def _batch(batch: int, duration: float, steps: int, guidance: float, seed: int) -> SongBatch:
    # One prompt for every row: rows that share a call have the same token counts (as the planner groups).
    rows = [SongRow(0, i, seed + i, BENCH_PROMPTS[0], BENCH_LYRICS, "en") for i in range(batch)]
    return SongBatch(SongParams(duration=duration, steps=steps, guidance=guidance, shift=SHIFT), rows)


def _run(engine: str, pipe: Any, batch: SongBatch) -> tuple[float, int, float, np.ndarray]:
    """(seconds, peak memory bytes, CPU seconds, audio [rows, channels, samples]) of one run."""
    device = pipe._execution_device
    with _peak_memory(device) as peak:
        _sync(device)
        cpu0, t0 = time.process_time(), time.perf_counter()
        if engine == "diffusers":
            out = pipe(**pipeline_kwargs(batch), generator=row_generators(batch.rows)).audios
            samples = int(round(batch.params.duration * pipe.sample_rate))
            audio = out.float().cpu().numpy()[..., :samples]
        else:
            audio = np.stack(render(pipe, batch))
        _sync(device)
        return time.perf_counter() - t0, peak(), time.process_time() - cpu0, audio


def compare(
    pipe: Any,
    durations: Sequence[float],
    batch: int = 1,
    *,
    model_name: str = "model",
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    repeats: int = 4,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (duration, engine), with decodebench's keys (`format_table` prints them) and
    `identical` (the two engines' audio is bitwise equal); ratio is gen_s / diffusers' gen_s."""
    device = pipe._execution_device
    dtype = str(pipe.transformer.dtype).replace("torch.", "")
    steps = steps or default_steps(pipe.is_turbo)
    guidance = guidance or default_guidance(pipe.is_turbo)
    rows: list[dict[str, Any]] = []
    for duration in durations:
        work = _batch(batch, duration, steps, guidance, seed)
        best: dict[str, tuple[float, int, float]] = {}
        runs: dict[str, list[float]] = {engine: [] for engine in ENGINES}
        audio: dict[str, np.ndarray] = {}
        for engine in ENGINES:
            if progress:
                progress(f"warm-up {engine} {duration:g}s x{batch}")
            _run(engine, pipe, work)
        for attempt in range(max(1, repeats)):
            # Alternate who goes first: on a shared machine the second of a pair often runs warmer.
            for engine in ENGINES if attempt % 2 == 0 else ENGINES[::-1]:
                if progress:
                    progress(f"{engine} {duration:g}s x{batch} run {attempt + 1}/{repeats}")
                gen_s, peak, cpu_s, audio[engine] = _run(engine, pipe, work)
                runs[engine].append(gen_s)
                if engine not in best or gen_s < best[engine][0]:
                    best[engine] = (gen_s, max(peak, best.get(engine, (0, 0, 0))[1]), cpu_s)
        identical = bool(np.array_equal(audio["diffusers"], audio["dgx-music"]))
        reference = best["diffusers"][0]
        for engine in ENGINES:
            gen_s, peak, cpu_s = best[engine]
            rows.append(
                {
                    "engine": engine,
                    "model": model_name,
                    "batch": batch,
                    "duration_s": float(duration),
                    "gen_s": round(gen_s, 4),
                    "gen_s_median": round(statistics.median(runs[engine]), 4),
                    "gen_s_runs": [round(t, 4) for t in runs[engine]],
                    "rtf": round(gen_s / duration, 4),
                    "peak_memory_bytes": int(peak),
                    "steps": steps,
                    "ms_per_step": round(1000.0 * gen_s / steps, 3),
                    "audio_s_per_s": round(batch * duration / gen_s, 3),
                    "ratio": round(gen_s / reference, 3) if reference > 0 else None,
                    "cpu_s": round(cpu_s, 4),
                    "identical": identical,
                    "device": str(device),
                    "dtype": dtype,
                }
            )
    return rows
