"""Side-by-side benchmark of the decode backends: transformers `generate` against our loop.

Both engines get the same model, prompts, lengths and sampling settings, and both are timed end
to end the way a job runs: text in, audio out (tokens through `daemon.engine.decoding.codec.codes_to_audio`).
Each engine is warmed up once per length, then timed `repeats` times, the engines interleaved so
that a noisy neighbour on a shared machine hits both alike; the fastest run counts (`gen_s`), and
every run's time and their median are reported beside it (`gen_s_runs`, `gen_s_median`).
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from daemon.engine.decoding.api import DecodeBackend, DecodeRequest, RowSampling
from daemon.engine.decoding.codec import codes_to_audio, frame_rate
from daemon.engine.decoding.hf import TransformersBackend

ENGINES = ("transformers", "dgx-music")

BENCH_PROMPTS = (
    "warm lo-fi hip hop beat with dusty piano and vinyl crackle",
    "energetic synthwave track with driving bass and bright arpeggios",
    "calm ambient pad with soft strings and distant bells",
    "funky disco groove with slap bass and brass stabs",
    "dark techno loop with heavy kick and filtered hi-hats",
    "acoustic folk guitar with light percussion, summer morning",
    "epic orchestral cinematic build with choir and drums",
    "jazz trio with brushed drums, upright bass and piano",
)


def backend_for(engine: str) -> DecodeBackend:
    if engine == "transformers":
        return TransformersBackend()
    if engine == "dgx-music":
        from daemon.engine.decoding.dgx import DgxBackend

        return DgxBackend()
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")


class _PeakRss:
    """Peak resident memory of this process while running (CPU runs), polled every few ms."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm", encoding="ascii") as fh:
                return int(fh.read().split()[1]) * self._page
        except OSError:
            # Not Linux: the lifetime peak is the best there is.
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval_s)

    @contextmanager
    def watch(self) -> Iterator[None]:
        self.peak = self._rss()
        thread = threading.Thread(target=self._poll, name="peak-rss", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()
            self._stop.clear()
            self.peak = max(self.peak, self._rss())


@contextmanager
def _peak_memory(device: torch.device) -> Iterator[Callable[[], int]]:
    """Yields a function giving the peak memory (bytes) of the block: CUDA allocator or process RSS."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield lambda: int(torch.cuda.max_memory_allocated(device))
        return
    watcher = _PeakRss()
    with watcher.watch():
        yield lambda: watcher.peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _request(
    processor: Any, model: Any, batch: int, frames: int, cfg_coef: float, greedy: bool, seed: int
) -> DecodeRequest:
    prompts = [BENCH_PROMPTS[i % len(BENCH_PROMPTS)] for i in range(batch)]
    enc = processor(text=prompts, padding=True, return_tensors="pt")
    device = next(model.parameters()).device
    rows = [
        RowSampling(temperature=1.0, top_k=250, top_p=0.0, greedy=greedy, seed=seed + i) for i in range(batch)
    ]
    return DecodeRequest(
        input_ids=enc["input_ids"].to(device),
        attention_mask=enc["attention_mask"].to(device),
        rows=rows,
        cfg_coef=cfg_coef,
        max_frames=frames,
    )


def _run_once(backend: DecodeBackend, model: Any, req: DecodeRequest) -> tuple[float, float, int, float]:
    """(tokens seconds, total seconds, peak memory bytes, CPU seconds) for one text -> audio run."""
    device = next(model.parameters()).device
    with _peak_memory(device) as peak, torch.inference_mode():
        _sync(device)
        cpu_start = time.process_time()
        start = time.perf_counter()
        codes = backend.decode(model, req)
        _sync(device)
        tokens_done = time.perf_counter()
        audio = codes_to_audio(model, codes)
        _sync(device)
        end = time.perf_counter()
        cpu_s = time.process_time() - cpu_start
        if audio.shape[0] != codes.shape[0]:
            raise RuntimeError(f"codec returned {audio.shape[0]} clips for {codes.shape[0]} rows")
        return tokens_done - start, end - start, peak(), cpu_s


def compare(
    model: Any,
    processor: Any,
    durations: Sequence[float] = (4.0, 8.0, 16.0, 30.0),
    batch: int = 1,
    *,
    model_name: str = "model",
    engines: Sequence[str] = ENGINES,
    cfg_coef: float = 3.0,
    greedy: bool = False,
    seed: int = 0,
    repeats: int = 1,
    warmup: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (duration, engine): timings, RTF, throughput, peak memory and the ratio.

    Row keys: engine, model, batch, duration_s, gen_s, rtf, peak_memory_bytes (the `--json`
    contract), plus frames, steps, tokens_s, ms_per_step, audio_s_per_s, device, dtype and
    ratio (this engine's gen_s / transformers' gen_s; below 1.0 is faster), and cpu_s (process
    CPU time of that run: on a shared machine, a steadier measure of work than wall time).
    """
    device = next(model.parameters()).device
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    fps = frame_rate(model)
    kc = model.config.decoder.num_codebooks // model.config.decoder.audio_channels
    backends = {engine: backend_for(engine) for engine in engines}
    rows: list[dict[str, Any]] = []
    for duration in durations:
        frames = max(kc, round(duration * fps))
        req = _request(processor, model, batch, frames, cfg_coef, greedy, seed)
        best: dict[str, tuple[float, float, int, float]] = {}
        runs: dict[str, list[float]] = {engine: [] for engine in engines}
        peaks: dict[str, int] = {}
        if warmup:
            for engine, backend in backends.items():
                if progress:
                    progress(f"warm-up {engine} {duration:g}s x{batch}")
                _run_once(backend, model, req)
        for attempt in range(max(1, repeats)):
            for engine, backend in backends.items():
                if progress:
                    progress(f"{engine} {duration:g}s x{batch} run {attempt + 1}/{repeats}")
                result = _run_once(backend, model, req)
                runs[engine].append(result[1])
                peaks[engine] = max(peaks.get(engine, 0), result[2])
                if engine not in best or result[1] < best[engine][1]:
                    best[engine] = result
        steps = frames + kc - 1
        reference = best.get("transformers", (0.0, 0.0, 0))[1]
        for engine in engines:
            tokens_s, gen_s, _, cpu_s = best[engine]
            peak = peaks[engine]
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
                    "frames": frames,
                    "steps": steps,
                    "tokens_s": round(tokens_s, 4),
                    "ms_per_step": round(1000.0 * tokens_s / steps, 3),
                    "audio_s_per_s": round(batch * duration / gen_s, 3),
                    "ratio": round(gen_s / reference, 3) if reference > 0 else None,
                    "cpu_s": round(cpu_s, 4),
                    "device": str(device),
                    "dtype": dtype,
                }
            )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of `compare` rows for terminals and notes."""
    header = (
        f"{'engine':<13} {'model':<10} {'batch':>5} {'dur s':>6} {'gen s':>8} {'ms/step':>8} "
        f"{'RTF':>7} {'audio s/s':>9} {'peak MiB':>9} {'ratio':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        ratio = "" if row.get("ratio") is None else f"{row['ratio']:.3f}"
        lines.append(
            f"{row['engine']:<13} {row['model']:<10} {row['batch']:>5} {row['duration_s']:>6g} "
            f"{row['gen_s']:>8.3f} {row['ms_per_step']:>8.2f} {row['rtf']:>7.3f} "
            f"{row['audio_s_per_s']:>9.2f} {row['peak_memory_bytes'] / 2**20:>9.0f} {ratio:>6}"
        )
    return "\n".join(lines)
