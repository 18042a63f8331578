"""The music engine: a resident MusicGen model that turns prompts into audio arrays.

Kept from the seed system: `load_model`, `unload_model`, `set_generation_params`, `generate`,
`save_audio`, `benchmark`, `get_stats`. Post-processing (loudness) and writing belong to the
caller (`daemon.audio.loudness`, `daemon.audio.encode`).

Reproducibility: every job gets an effective seed (given, or drawn from os.urandom) and
variation i uses seed + i. Decoding runs under a forked, seeded torch RNG, so nothing outside the
job (other jobs, global torch.manual_seed calls) changes its samples. With the transformers
backend a row's samples also depend on its batch mates (one RNG per `generate` call); the engine
only batches rows of the same job together unless the dgx backend (per-row generators) is used.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from daemon.engine.checkpoints import LoadedCheckpoint, load_checkpoint, resolve_spec
from daemon.core.config import Settings
from daemon.engine.devices import peak_memory_bytes, reset_peak_memory, resolve_device, resolve_dtype
from daemon.core.errors import (
    DgxMusicError,
    ModelLoadError,
    GenerationCancelled,
    GenerationError,
    GenerationTimeoutError,
    OutOfMemoryError,
)
from daemon.engine.longform import decode_long, plan_windows, planned_steps
from daemon.engine.decoding.tokens import DecodeBackend, DecodeRequest, RowSampling, codes_to_audio, get_backend

log = logging.getLogger(__name__)

SEED_MOD = 2**63


# ---------------------------------------------------------------- public data


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to render `count` times. Sampling defaults are MusicGen/audiocraft's."""

    prompt: str
    duration: float
    count: int = 1
    seed: int | None = None
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_coef: float = 3.0
    greedy: bool = False

    def __post_init__(self) -> None:
        if not self.prompt or not self.prompt.strip():
            raise ValueError("prompt must not be empty")
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"duration must be a positive number of seconds, got {self.duration!r}")
        if self.count < 1:
            raise ValueError(f"count must be at least 1, got {self.count}")
        if self.seed is not None and not 0 <= self.seed < SEED_MOD:
            raise ValueError(f"seed must be in 0..2**63-1, got {self.seed}")
        if not self.greedy and not self.temperature > 0:
            raise ValueError("temperature must be > 0 (use greedy: true for argmax decoding)")
        if self.top_k < 0 or not 0.0 <= self.top_p <= 1.0:
            raise ValueError("top_k must be >= 0 and top_p within 0..1 (0 turns either filter off)")

    def sampling(self, seed: int) -> RowSampling:
        return RowSampling(
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, greedy=self.greedy, seed=seed
        )


@dataclass
class Progress:
    """Decoding progress of one `generate` call, in decoding steps (one audio frame each)."""

    frames_done: int
    frames_total: int
    elapsed_s: float

    @property
    def fraction(self) -> float:
        if self.frames_total <= 0:
            return 0.0
        return min(1.0, max(0.0, self.frames_done / self.frames_total))


@dataclass(frozen=True)
class LoadedModelInfo:
    name: str
    source: str  # hub repo id or local directory
    revision: str  # commit hash, or "local:<sha256>" for a directory
    dtype: str
    device: str
    parameters: int
    sample_rate: int
    channels: int
    frame_rate: float  # codec frames per second = sample_rate / prod(upsampling_ratios)
    load_s: float
    backend: str = "transformers"

    def sidecar_fields(self) -> dict[str, Any]:
        """The sidecar's `model` block (jobspec.sidecar.ModelInfo)."""
        return {
            "name": self.name,
            "source": self.source,
            "revision": self.revision,
            "dtype": self.dtype,
            "device": self.device,
            "parameters": self.parameters,
        }


@dataclass
class GenerationResult:
    audio: np.ndarray  # float32 [count, channels, samples]
    sample_rate: int
    seed: int  # effective seed; variation i used seed + i
    generate_s: float
    peak_memory_bytes: int
    model: LoadedModelInfo
    request: GenerationRequest | None = None

    @property
    def audio_seconds(self) -> float:
        return self.audio.shape[0] * self.audio.shape[-1] / self.sample_rate

    @property
    def rtf(self) -> float:
        """Generation seconds per second of audio produced (all variations)."""
        return self.generate_s / self.audio_seconds if self.audio_seconds else 0.0


@dataclass
class EngineStats:
    model: str | None
    source: str | None
    revision: str | None
    device: str | None
    dtype: str | None
    parameters: int
    backend: str | None
    loads: int = 0
    jobs: int = 0
    failed_jobs: int = 0
    audio_seconds: float = 0.0
    generate_seconds: float = 0.0
    mean_rtf: float = 0.0  # total generation seconds / total audio seconds
    peak_memory_bytes: int = 0
    last_used_monotonic: float | None = None
    loaded: bool = False  # whether `model` is resident now (it may have been unloaded when idle)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- internals


@dataclass
class _Row:
    req_index: int
    variation: int
    sampling: RowSampling


@dataclass
class _Chunk:
    """Rows decoded together: same sampling (seeds aside), guidance and length."""

    rows: list[_Row]
    prompts: list[str]
    cfg_coef: float
    frames: int
    samples: int  # exact output length: round(duration * sample_rate)


@dataclass
class _Clock:
    """Step accounting shared by all decode calls of one generate() call."""

    start: float
    total: int
    done: int = 0
    callback_error: BaseException | None = None
    timings: dict[int, float] = field(default_factory=dict)


class MusicEngine:
    """One resident model at a time (loading another unloads the first); thread-safe entry points."""

    def __init__(self, settings: Settings, *, backend: DecodeBackend | None = None) -> None:
        self.settings = settings
        self._backend = backend
        self._lock = threading.RLock()
        self._ckpt: LoadedCheckpoint | None = None
        self._info: LoadedModelInfo | None = None
        self._device: torch.device | None = None
        self._defaults: dict[str, Any] = {}
        self._last_used: float | None = None
        self._stats = EngineStats(None, None, None, None, None, 0, None)
        self._peak = 0

    # ------------------------------------------------------------ model lifecycle

    @property
    def info(self) -> LoadedModelInfo | None:
        return self._info

    def is_loaded(self, name: str | None = None) -> bool:
        if self._info is None:
            return False
        return name is None or self._info.name == name

    def load_model(self, name: str | None = None) -> LoadedModelInfo:
        """Load `name` (default: the config's default_model) unless it is already resident."""
        name = name or self.settings.default_model
        with self._lock:
            if self._info is not None and self._info.name == name:
                return self._info
            resolve_spec(name, self.settings)  # unknown names fail before anything is unloaded
            self.unload_model()
            t0 = time.monotonic()
            device = resolve_device(self.settings.device)
            dtype = resolve_dtype(self.settings.dtype, device)
            try:
                ckpt = load_checkpoint(name, self.settings, device=device, dtype=dtype)
            except DgxMusicError:
                raise
            except Exception as exc:
                # Loaders raise their own types (safetensors' SafetensorError on a damaged
                # header is none of OSError/ValueError): the daemon must still see a load failure.
                raise ModelLoadError(
                    f"model {name!r}: cannot load the checkpoint: {type(exc).__name__}: {exc}",
                    hint="the checkpoint is damaged or from an incompatible version: copy or download it again",
                ) from exc
            backend = self.backend
            model = ckpt.model
            acfg = model.config.audio_encoder
            info = LoadedModelInfo(
                name=name,
                source=ckpt.source,
                revision=ckpt.revision,
                dtype=str(dtype).removeprefix("torch."),
                device=str(device),
                parameters=int(sum(p.numel() for p in model.parameters())),
                sample_rate=int(acfg.sampling_rate),
                channels=int(model.config.decoder.audio_channels),
                frame_rate=acfg.sampling_rate / math.prod(acfg.upsampling_ratios),
                load_s=0.0,
                backend=backend.name,
            )
            self._ckpt, self._device, self._backend = ckpt, device, backend
            self._info = info
            try:
                if self.settings.warmup:
                    self._warmup()
            except DgxMusicError as exc:
                self.unload_model()
                raise ModelLoadError(
                    f"model {name!r} loaded but its warm-up generation failed: {exc.message}",
                    hint=exc.hint or "run `dgx-music doctor`; try dtype float32 or another device",
                ) from exc
            except BaseException:
                self.unload_model()
                raise
            info = replace(info, load_s=time.monotonic() - t0)
            self._info = info
            self._last_used = time.monotonic()
            # Job counters span the engine's life; the model fields describe the resident model.
            self._stats = replace(
                self._stats, model=info.name, source=info.source, revision=info.revision, device=info.device,
                dtype=info.dtype, parameters=info.parameters, backend=info.backend, loads=self._stats.loads + 1,
            )
            log.info(
                "model %s loaded from %s (revision %s) on %s/%s: %.1fM parameters, %d Hz, %d channel(s), "
                "%.2f frames/s, decoder %s, %.1f s",
                info.name, info.source, info.revision, info.device, info.dtype, info.parameters / 1e6,
                info.sample_rate, info.channels, info.frame_rate, info.backend, info.load_s,
            )
            return info

    def _warmup(self) -> None:
        """One short generation so the first job pays no lazy-initialisation cost."""
        assert self._info is not None
        seconds = min(1.0, self.settings.window_s)
        t0 = time.monotonic()
        self._generate_locked([GenerationRequest("warm up", seconds, seed=0)], None, None, None, record=False)
        log.info("warm-up generation of %.1f s took %.2f s", seconds, time.monotonic() - t0)

    def unload_model(self) -> None:
        """Drop the model and give its memory back (GPU memory included)."""
        with self._lock:
            if self._ckpt is None:
                return
            name = self._info.name if self._info else "?"
            device = self._device
            self._ckpt = None
            self._info = None
            if self._backend is not None and hasattr(self._backend, "reset"):
                self._backend.reset()  # backends may hold caches or captured graphs
            gc.collect()
            if device is not None and device.type == "cuda":
                torch.cuda.empty_cache()
            log.info("model %s unloaded", name)

    def maybe_idle_unload(self, now: float | None = None) -> bool:
        """Unload when idle for `idle_unload_s` (0: never). Never blocks a running generation."""
        limit = self.settings.idle_unload_s
        if limit <= 0 or self._ckpt is None or self._last_used is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_used < limit:
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._ckpt is None or self._last_used is None or now - self._last_used < limit:
                return False
            log.info("model idle for %.0f s (idle_unload_s=%.0f): unloading", now - self._last_used, limit)
            self.unload_model()
            return True
        finally:
            self._lock.release()

    @property
    def backend(self) -> DecodeBackend:
        """The decode loop in use (resolved from the `decoder` setting on first use)."""
        if self._backend is None:
            self._backend = get_backend(self.settings.decoder)
        return self._backend

    def set_backend(self, backend: DecodeBackend) -> None:
        """Swap the decode loop (bench --compare); the model stays resident."""
        with self._lock:
            old = self._backend
            if old is not None and old is not backend and hasattr(old, "reset"):
                old.reset()
            self._backend = backend
            if self._info is not None:
                self._info = replace(self._info, backend=backend.name)
                self._stats.backend = backend.name

    # ------------------------------------------------------------ generation

    def set_generation_params(self, **defaults: Any) -> None:
        """Defaults for `request()` (the seed's API): any GenerationRequest field but prompt."""
        allowed = {f.name for f in fields(GenerationRequest)} - {"prompt"}
        unknown = set(defaults) - allowed
        if unknown:
            raise ValueError(f"unknown generation parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        self._defaults.update(defaults)

    def request(self, prompt: str, **overrides: Any) -> GenerationRequest:
        """A GenerationRequest from the defaults set by set_generation_params, then `overrides`."""
        values: dict[str, Any] = {"duration": 16.0, **self._defaults, **overrides}
        return GenerationRequest(prompt=prompt, **values)

    def generate(
        self,
        requests: Sequence[GenerationRequest] | GenerationRequest,
        *,
        model: str | None = None,
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
        timeout_s: float | None = None,
    ) -> list[GenerationResult]:
        """Audio for each request (one result per request, in order).

        Raises GenerationCancelled / GenerationTimeoutError (checked at every decoding step),
        OutOfMemoryError (after a split retry), GenerationError, ModelLoadError / UnknownModelError.
        """
        if isinstance(requests, GenerationRequest):
            requests = [requests]
        if not requests:
            return []
        with self._lock:
            self.load_model(model)
            try:
                results = self._generate_locked(list(requests), progress, cancel, timeout_s, record=True)
            except BaseException:
                self._stats.failed_jobs += len(requests)
                raise
            finally:
                self._last_used = time.monotonic()
            return results

    def _generate_locked(
        self,
        requests: list[GenerationRequest],
        progress: Callable[[Progress], None] | None,
        cancel: threading.Event | None,
        timeout_s: float | None,
        *,
        record: bool,
    ) -> list[GenerationResult]:
        assert self._ckpt is not None and self._info is not None and self._device is not None
        model = self._ckpt.model
        info = self._info
        seeds = [r.seed if r.seed is not None else _random_seed() for r in requests]
        chunks = self._plan(requests, seeds, model)
        clock = _Clock(start=time.monotonic(), total=sum(self._chunk_steps(model, c) for c in chunks))
        deadline = None if timeout_s is None else clock.start + timeout_s
        audio_rows: dict[tuple[int, int], np.ndarray] = {}
        per_request_s = [0.0] * len(requests)
        reset_peak_memory(self._device)

        with torch.inference_mode():
            for chunk in chunks:
                t0 = time.monotonic()
                for row, audio in zip(chunk.rows, self._run_chunk(chunk, clock, progress, cancel, deadline)):
                    audio_rows[(row.req_index, row.variation)] = audio
                spent = time.monotonic() - t0
                for ri in {r.req_index for r in chunk.rows}:
                    per_request_s[ri] += spent
        peak = peak_memory_bytes(self._device)
        results = []
        for i, (req, seed) in enumerate(zip(requests, seeds)):
            audio = np.stack([audio_rows[(i, v)] for v in range(req.count)]).astype(np.float32, copy=False)
            results.append(
                GenerationResult(
                    audio=audio, sample_rate=info.sample_rate, seed=seed, generate_s=per_request_s[i],
                    peak_memory_bytes=peak, model=info, request=req,
                )
            )
        if record:
            for res in results:
                self._stats.jobs += 1
                self._stats.audio_seconds += res.audio_seconds
                self._stats.generate_seconds += res.generate_s
                log.info(
                    "generated %d x %.2f s (%s) in %.2f s: RTF %.3f, seed %d, peak memory %.0f MiB",
                    res.audio.shape[0], res.audio.shape[-1] / res.sample_rate, info.name, res.generate_s,
                    res.rtf, res.seed, peak / 2**20,
                )
            if self._stats.audio_seconds > 0:
                self._stats.mean_rtf = self._stats.generate_seconds / self._stats.audio_seconds
            self._peak = max(self._peak, peak)
            self._stats.peak_memory_bytes = self._peak
        return results

    def _plan(self, requests: list[GenerationRequest], seeds: list[int], model: Any) -> list[_Chunk]:
        """Rows grouped into decode batches: same sampling, guidance and length, at most max_batch rows.

        With the transformers backend only rows of one request share a batch, so a job's audio never
        depends on which other jobs were queued with it.
        """
        per_row_rng = getattr(self._backend, "per_row_seeds", False)
        groups: dict[tuple[Any, ...], list[tuple[_Row, str]]] = {}
        for i, (req, seed) in enumerate(zip(requests, seeds)):
            frames, samples = self.frames_for(req.duration), self.samples_for(req.duration)
            for v in range(req.count):
                row = _Row(i, v, req.sampling((seed + v) % SEED_MOD))
                key = (row.sampling.without_seed(), req.cfg_coef, frames, samples) + (() if per_row_rng else (i,))
                groups.setdefault(key, []).append((row, req.prompt))
        chunks = []
        size = self.settings.max_batch
        for key, members in groups.items():
            cfg_coef, frames, samples = key[1], key[2], key[3]
            for k in range(0, len(members), size):
                part = members[k : k + size]
                chunks.append(_Chunk([r for r, _ in part], [p for _, p in part], cfg_coef, frames, samples))
        return chunks

    def frames_for(self, duration: float) -> int:
        """Codec frames covering `duration` seconds at the loaded model's own frame rate."""
        assert self._info is not None
        return max(1, math.ceil(duration * self._info.frame_rate - 1e-9))

    def samples_for(self, duration: float) -> int:
        assert self._info is not None
        return int(round(duration * self._info.sample_rate))

    def _window_frames(self) -> tuple[int, int]:
        assert self._info is not None
        window = max(2, int(round(self.settings.window_s * self._info.frame_rate)))
        stride = min(window - 1, max(1, int(round(self.settings.extend_stride_s * self._info.frame_rate))))
        return window, stride

    def _chunk_steps(self, model: Any, chunk: _Chunk) -> int:
        window, stride = self._window_frames()
        return planned_steps(model, plan_windows(chunk.frames, window, stride))

    def _run_chunk(
        self,
        chunk: _Chunk,
        clock: _Clock,
        progress: Callable[[Progress], None] | None,
        cancel: threading.Event | None,
        deadline: float | None,
    ) -> list[np.ndarray]:
        """Audio per row; on CUDA out-of-memory: free the cache, split in halves, retry once."""
        try:
            return self._decode_chunk(chunk, clock, progress, cancel, deadline)
        except torch.OutOfMemoryError as exc:
            self._after_oom()
            if len(chunk.rows) == 1:
                raise OutOfMemoryError(
                    f"out of memory generating {chunk.frames} frames for one row on {self._info.device if self._info else '?'}",
                    hint="shorten the clip, use a smaller model, or free GPU memory",
                ) from exc
            half = len(chunk.rows) // 2
            log.warning("out of memory with a batch of %d rows: retrying as %d + %d", len(chunk.rows), half,
                        len(chunk.rows) - half)
            out: list[np.ndarray] = []
            model = self._ckpt.model if self._ckpt else None
            for part in (slice(0, half), slice(half, None)):
                sub = replace(chunk, rows=chunk.rows[part], prompts=chunk.prompts[part])
                clock.total += self._chunk_steps(model, sub)
                try:
                    out.extend(self._decode_chunk(sub, clock, progress, cancel, deadline))
                except torch.OutOfMemoryError as exc2:
                    self._after_oom()
                    raise OutOfMemoryError(
                        f"out of memory even after splitting the batch ({len(sub.rows)} of {len(chunk.rows)} rows)",
                        hint="lower max_batch or count, shorten the clip, or use a smaller model",
                    ) from exc2
            return out

    def _after_oom(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _decode_chunk(
        self,
        chunk: _Chunk,
        clock: _Clock,
        progress: Callable[[Progress], None] | None,
        cancel: threading.Event | None,
        deadline: float | None,
    ) -> list[np.ndarray]:
        assert self._ckpt is not None and self._device is not None and self._backend is not None
        model, processor = self._ckpt.model, self._ckpt.processor
        enc = processor(text=chunk.prompts, padding=True, return_tensors="pt")
        req = DecodeRequest(
            input_ids=enc["input_ids"].to(self._device),
            attention_mask=enc["attention_mask"].to(self._device),
            rows=[r.sampling for r in chunk.rows],
            cfg_coef=chunk.cfg_coef,
            max_frames=chunk.frames,
        )
        base = clock.done
        on_step = self._step_callback(clock, progress, cancel, deadline)
        window, stride = self._window_frames()

        def call_step(done_in_chunk: int, _total: int) -> None:
            on_step(base + done_in_chunk)

        try:
            codes = decode_long(self._backend, model, req, window_frames=window, stride_frames=stride,
                                on_step=call_step)
            clock.done = base + self._chunk_steps(model, chunk)
            self._check_abort(cancel, deadline)
            audio = codes_to_audio(model, codes)
        except (DgxMusicError, torch.OutOfMemoryError):
            raise
        except BaseException as exc:
            if clock.callback_error is not None and exc is clock.callback_error:
                raise  # the caller's own progress callback failed: its exception, unchanged
            if isinstance(exc, Exception):
                raise GenerationError(f"generation failed: {type(exc).__name__}: {exc}") from exc
            raise
        audio_np = audio.detach().to("cpu", torch.float32).numpy()
        return [_fit(audio_np[j], chunk.samples) for j in range(audio_np.shape[0])]

    def _check_abort(self, cancel: threading.Event | None, deadline: float | None) -> None:
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("generation cancelled")
        if deadline is not None and time.monotonic() > deadline:
            raise GenerationTimeoutError(
                "generation ran past its time limit",
                hint="raise job_timeout_s in the config, or shorten the clip",
            )

    def _step_callback(
        self,
        clock: _Clock,
        progress: Callable[[Progress], None] | None,
        cancel: threading.Event | None,
        deadline: float | None,
    ) -> Callable[[int], None]:
        def on_step(done: int) -> None:
            clock.done = max(clock.done, done)
            self._check_abort(cancel, deadline)
            if progress is not None:
                try:
                    progress(Progress(clock.done, clock.total, time.monotonic() - clock.start))
                except BaseException as exc:
                    clock.callback_error = exc
                    raise

        return on_step

    # ------------------------------------------------------------ seed API kept

    def save_audio(
        self,
        result: GenerationResult,
        path: Path | str,
        *,
        variation: int = 0,
        format: str = "wav",
        subtype: str = "PCM_16",
    ) -> Any:
        """Write one variation of `result` (no loudness processing) with daemon.audio.encode."""
        from daemon.audio.encode import write_audio

        return write_audio(path, result.audio[variation], result.sample_rate, format, subtype)  # type: ignore[arg-type]

    def benchmark(self, durations: Sequence[float] = (4, 8, 16, 30), **kwargs: Any) -> Any:
        """The seed's benchmark on the resident model (see daemon.ops.bench.run_benchmark)."""
        from daemon.ops.bench import run_benchmark

        return run_benchmark(self, durations, **kwargs)

    def get_stats(self) -> EngineStats:
        return replace(self._stats, last_used_monotonic=self._last_used, loaded=self._info is not None)


def _fit(audio: np.ndarray, n: int) -> np.ndarray:
    """[channels, samples] trimmed or zero-padded to exactly n samples."""
    if audio.shape[-1] >= n:
        return np.ascontiguousarray(audio[..., :n])
    return np.pad(audio, ((0, 0), (0, n - audio.shape[-1])))


def _random_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") % SEED_MOD
