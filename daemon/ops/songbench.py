"""Side-by-side benchmark of ACE-Step: diffusers' own `AceStepPipeline.__call__` against the
family's render (`daemon.engine.acestep.song.render`) on the same pipeline, inputs, seeds and steps.

Both are timed end to end (text in, 48 kHz audio out), warmed up once per length, then timed
`repeats` times interleaved, who goes first alternating, so that a noisy neighbour hits both
alike; the fastest run counts (`gen_s`; every run's time and their median beside it).
Each row also says whether the two made the same audio (`identical`), which they must.

With `compiled`, a third engine (`dgx-compiled`) renders with the DiT under torch.compile
(`daemon.engine.acestep.compiled`, compiled by its warm-up, whose time is `first_call_s`): its row
has `vs_eager` (its time / the eager render's) and how far its audio is from the eager render's
(`max_abs_diff`, `snr_db`, `within_tolerance`: float32 within `FP32_TOLERANCE` of full scale, half
precision at least `HALF_SNR_DB` dB above the difference). Without it, or when the compile
fails, the dgx-music row says why in `compile_skipped`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from daemon.engine.acestep.compiled import CompiledDit, compile_error, is_compile_error
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
COMPILED = "dgx-compiled"
# How close the compiled DiT's song must stay to the eager one's: fused kernels reorder the
# arithmetic, which float32 keeps to rounding; in half precision the rounding of each step's
# intermediates differs, so the bound is the difference's power below the song's.
FP32_TOLERANCE = 1e-4
HALF_SNR_DB = 30.0

BENCH_LYRICS = (
    "[verse]\nMorning light on the harbour wall\nGulls are singing over it all\n"
    "[chorus]\nHold on, hold on, the tide is turning\nHold on, the lights are burning"
)


def _batch(batch: int, duration: float, steps: int, guidance: float, seed: int) -> SongBatch:
    # One prompt for every row: rows that share a call have the same token counts (as the planner groups).
    rows = [SongRow(0, i, seed + i, BENCH_PROMPTS[0], BENCH_LYRICS, "en") for i in range(batch)]
    return SongBatch(SongParams(duration=duration, steps=steps, guidance=guidance, shift=SHIFT), rows)


def _run(
    engine: str, pipe: Any, batch: SongBatch, dit: Callable[..., Any] | None = None
) -> tuple[float, int, float, np.ndarray]:
    """(seconds, peak memory bytes, CPU seconds, audio [rows, channels, samples]) of one run."""
    device = pipe._execution_device
    with _peak_memory(device) as peak, torch.inference_mode():
        _sync(device)
        cpu0, t0 = time.process_time(), time.perf_counter()
        if engine == "diffusers":
            out = pipe(**pipeline_kwargs(batch), generator=row_generators(batch.rows)).audios
            samples = int(round(batch.params.duration * pipe.sample_rate))
            audio = out.float().cpu().numpy()[..., :samples]
        else:
            audio = np.stack(render(pipe, batch, dit=dit if engine == COMPILED else None))
        _sync(device)
        return time.perf_counter() - t0, peak(), time.process_time() - cpu0, audio


def closeness(eager: np.ndarray, compiled: np.ndarray, dtype: str) -> dict[str, Any]:
    """How far the compiled render's audio is from the eager one's, and whether that is within
    the tolerance of `dtype`."""
    diff = compiled.astype(np.float64) - eager.astype(np.float64)
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    noise = float(np.mean(diff**2)) if diff.size else 0.0
    signal = float(np.mean(eager.astype(np.float64) ** 2)) if eager.size else 0.0
    snr = math.inf if noise == 0.0 else 10.0 * math.log10(max(signal, 1e-30) / noise)
    within = max_abs <= FP32_TOLERANCE if dtype == "float32" else snr >= HALF_SNR_DB
    return {
        "max_abs_diff": max_abs,
        "snr_db": None if math.isinf(snr) else round(snr, 2),
        "within_tolerance": bool(within),
    }


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
    compiled: bool = False,
    compile_skipped: str | None = None,
) -> list[dict[str, Any]]:
    """One row per (duration, engine), with decodebench's keys (`format_table` prints them) and
    `identical` (the engine's audio is bitwise the eager render's; diffusers' row: the eager
    render's is diffusers'); ratio is gen_s / diffusers' gen_s. `compiled`: the compiled engine
    too; `compile_skipped`: why it is not run (reported on the dgx-music rows)."""
    say = progress or (lambda text: None)
    steps = steps or default_steps(pipe.is_turbo)
    guidance = guidance or default_guidance(pipe.is_turbo)
    dit = CompiledDit(pipe.transformer) if compiled else None
    rows: list[dict[str, Any]] = []
    for duration in durations:
        work = _batch(batch, duration, steps, guidance, seed)
        engines = list(ENGINES)
        for engine in ENGINES:
            say(f"warm-up {engine} {duration:g}s x{batch}")
            _run(engine, pipe, work)
        first_call_s = None
        if dit is not None:
            say(f"warm-up {COMPILED} {duration:g}s x{batch} (compiles the DiT)")
            try:
                first_call_s = _run(COMPILED, pipe, work, dit)[0]
                engines.append(COMPILED)
            except Exception as exc:
                if not is_compile_error(exc):
                    raise
                dit, compile_skipped = None, f"the compile failed: {compile_error(exc)}"
        runs: dict[str, list[float]] = {engine: [] for engine in engines}
        best: dict[str, tuple[float, int, float]] = {}
        audio: dict[str, np.ndarray] = {}
        for attempt in range(max(1, repeats)):
            # Alternate who goes first: on a shared machine the second of a pair often runs warmer.
            for engine in engines if attempt % 2 == 0 else engines[::-1]:
                say(f"{engine} {duration:g}s x{batch} run {attempt + 1}/{repeats}")
                gen_s, peak, cpu_s, audio[engine] = _run(engine, pipe, work, dit)
                runs[engine].append(gen_s)
                if engine not in best or gen_s < best[engine][0]:
                    best[engine] = (gen_s, max(peak, best.get(engine, (0, 0, 0))[1]), cpu_s)
        for engine in engines:
            row = _row(pipe, engine, model_name, work, best[engine], runs[engine], best["diffusers"][0])
            eager = audio["dgx-music"]
            row["identical"] = bool(
                np.array_equal(audio["diffusers" if engine != COMPILED else engine], eager)
            )
            if engine == COMPILED:
                row.update(
                    closeness(eager, audio[COMPILED], row["dtype"]), first_call_s=round(first_call_s or 0, 3)
                )
                row["vs_eager"] = round(best[COMPILED][0] / best["dgx-music"][0], 3)
            elif engine == "dgx-music" and compile_skipped:
                row["compile_skipped"] = compile_skipped
            rows.append(row)
    return rows


def _row(
    pipe: Any,
    engine: str,
    model_name: str,
    work: SongBatch,
    best: tuple[float, int, float],
    runs: list[float],
    reference: float,
) -> dict[str, Any]:
    gen_s, peak, cpu_s = best
    duration, batch, steps = work.params.duration, len(work.rows), work.params.steps
    return {
        "engine": engine,
        "model": model_name,
        "batch": batch,
        "duration_s": float(duration),
        "gen_s": round(gen_s, 4),
        "gen_s_median": round(statistics.median(runs), 4),
        "gen_s_runs": [round(t, 4) for t in runs],
        "rtf": round(gen_s / duration, 4),
        "peak_memory_bytes": int(peak),
        "steps": steps,
        "ms_per_step": round(1000.0 * gen_s / steps, 3),
        "audio_s_per_s": round(batch * duration / gen_s, 3),
        "ratio": round(gen_s / reference, 3) if reference > 0 else None,
        "cpu_s": round(cpu_s, 4),
        "device": str(pipe._execution_device),
        "dtype": str(pipe.transformer.dtype).replace("torch.", ""),
    }
