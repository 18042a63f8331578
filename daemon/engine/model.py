"""The music engine: a resident MusicGen model that turns prompts into audio arrays.

Kept from the seed system: `load_model`, `unload_model`, `set_generation_params`, `generate`,
`get_stats` (its `save_audio` and `benchmark` are in `daemon.ops.facade`). Post-processing
(loudness) and writing belong to the caller (`daemon.audio.loudness`, `daemon.audio.encode`).
How a call is cut into decode batches is `daemon.engine.plan`; running them (progress, abort,
OOM split) is `daemon.engine.run`. The values it takes and returns are `daemon.core.messages`
(re-exported here).

Reproducibility: every job gets an effective seed (given, or drawn from os.urandom) and
variation i uses seed + i. Decoding runs under a forked, seeded torch RNG, so nothing outside the
job (other jobs, global torch.manual_seed calls) changes its samples. With the transformers
backend a row's samples also depend on its batch mates (one RNG per `generate` call); the engine
only batches rows of the same job together unless the dgx backend (per-row generators) is used.
The dgx backend's `batch_invariant` keeps a row's arithmetic independent of its batch mates too
(fixed decode shapes); each result says what reproduces it (`GenerationResult.reproducibility`).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any

import numpy as np
import torch

from daemon.core.config import Settings
from daemon.core.errors import DgxMusicError, InvalidJobError, ModelLoadError
from daemon.core.messages import (
    SEED_MOD,
    EngineStats,
    GenerationRequest,
    GenerationResult,
    LoadedModelInfo,
    Progress,
)
from daemon.engine.checkpoints import LoadedCheckpoint, load_checkpoint, melody_models, resolve_spec
from daemon.engine.decoding import get_backend
from daemon.engine.decoding.api import DecodeBackend, reproducibility
from daemon.engine.decoding.codec import frame_rate
from daemon.engine.devices import peak_memory_bytes, reset_peak_memory, resolve_device, resolve_dtype
from daemon.engine.plan import Framing, effective_seeds, plan_chunks
from daemon.engine.run import ChunkRunner

__all__ = [
    "SEED_MOD",
    "EngineStats",
    "GenerationRequest",
    "GenerationResult",
    "LoadedModelInfo",
    "MusicEngine",
    "Progress",
]

log = logging.getLogger(__name__)


class MusicEngine:
    """One resident model at a time (loading another unloads the first); thread-safe entry points."""

    def __init__(self, settings: Settings, *, backend: DecodeBackend | None = None) -> None:
        self.settings = settings
        self._backend = backend
        self._hf_backend: DecodeBackend | None = None  # melody checkpoints decode with transformers
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
                    hint="the checkpoint is damaged or from an incompatible version: "
                    "copy or download it again",
                ) from exc
            backend = self._checked_backend(ckpt)
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
                frame_rate=frame_rate(model),
                load_s=0.0,
                backend="transformers" if ckpt.melody else backend.name,
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
                self._stats,
                model=info.name,
                source=info.source,
                revision=info.revision,
                device=info.device,
                dtype=info.dtype,
                parameters=info.parameters,
                backend=info.backend,
                loads=self._stats.loads + 1,
            )
            log.info(
                "model %s loaded from %s (revision %s) on %s/%s: %.1fM parameters, %d Hz, %d channel(s), "
                "%.2f frames/s, decoder %s, %.1f s",
                info.name,
                info.source,
                info.revision,
                info.device,
                info.dtype,
                info.parameters / 1e6,
                info.sample_rate,
                info.channels,
                info.frame_rate,
                info.backend,
                info.load_s,
            )
            return info

    def _checked_backend(self, ckpt: LoadedCheckpoint) -> DecodeBackend:
        """The backend to use for `ckpt`: under `decoder: auto`, the dgx loop only if it runs here."""
        backend = self.backend
        if self.settings.decoder != "auto" or getattr(backend, "name", None) != "dgx":
            return backend
        if ckpt.melody:
            # Melody checkpoints always decode with generate (see _generate_locked); probing the dgx
            # loop on them would only find that out and switch every later model to generate too.
            return backend
        from daemon.engine.decoding.hf import TransformersBackend
        from daemon.engine.decoding.probe import dgx_problem

        problem = dgx_problem(backend, TransformersBackend(), ckpt.model, ckpt.processor)
        if problem is None:
            return backend
        log.warning(
            "the dgx decode loop cannot run on this model with transformers %s (%s): using transformers "
            "generate instead (slower); set `decoder: transformers` to silence this, or install a "
            "transformers version pyproject.toml allows",
            _transformers_version(),
            problem,
        )
        fallback = TransformersBackend()
        self._backend = fallback
        return fallback

    def _warmup(self) -> None:
        """The decode buckets jobs use, then one short generation, so no job pays a capture or
        lazy initialisation."""
        assert self._info is not None and self._ckpt is not None
        prepare = getattr(self.backend, "prepare", None)
        if callable(prepare) and not self._ckpt.melody:
            # Full batches at the long-form window's length: every job up to the window uses it.
            prepare(self._ckpt.model, rows=self.settings.max_batch, frames=self._framing().window)
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
            s = self.settings
            self._backend = get_backend(
                s.decoder, batch_invariant=s.batch_invariant, max_batch=s.max_batch, kernels=s.kernels
            )
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
        info = self._info
        backend = self.backend
        if self._ckpt.melody:
            # The melody decoder prepends its conditioning to the sequence instead of attending to
            # it: only transformers' generate implements that, so melody checkpoints always use it.
            from daemon.engine.decoding.hf import TransformersBackend

            if backend.name != "transformers":
                backend = self._hf_backend = self._hf_backend or TransformersBackend()
        for req in requests:
            if req.melody is not None and not self._ckpt.melody:
                melodic = melody_models(self.settings)
                raise InvalidJobError(
                    f"model {info.name!r} cannot follow a melody (it is not a musicgen-melody checkpoint)",
                    loc="melody",
                    hint=(
                        f"use one of the melody models configured here: {', '.join(melodic)}"
                        if melodic
                        else "no melody model is configured here: ask the operator to add "
                        "facebook/musicgen-melody to `models:`"
                    )
                    + ", or leave `melody:` out",
                )
        seeds = effective_seeds(requests)
        framing = self._framing()
        chunks = plan_chunks(
            requests,
            seeds,
            framing,
            max_batch=self.settings.max_batch,
            per_row_seeds=bool(getattr(backend, "per_row_seeds", False)),
        )
        runner = ChunkRunner(
            self._ckpt,
            self._device,
            backend,
            framing,
            chunks,
            progress=progress,
            cancel=cancel,
            timeout_s=timeout_s,
        )
        audio_rows: dict[tuple[int, int], np.ndarray] = {}
        per_request_s = [0.0] * len(requests)
        reset_peak_memory(self._device)

        with torch.inference_mode():
            for chunk in chunks:
                t0 = time.monotonic()
                for row, audio in zip(chunk.rows, runner.run(chunk)):
                    audio_rows[(row.req_index, row.variation)] = audio
                spent = time.monotonic() - t0
                for ri in {r.req_index for r in chunk.rows}:
                    per_request_s[ri] += spent
        peak = peak_memory_bytes(self._device)
        prefix = {c.rows[0].req_index: c.prefix_frames for c in chunks if c.prefix_frames}
        repro = reproducibility(backend, self._ckpt.model)
        results = []
        for i, (req, seed) in enumerate(zip(requests, seeds)):
            audio = np.stack([audio_rows[(i, v)] for v in range(req.count)]).astype(np.float32, copy=False)
            results.append(
                GenerationResult(
                    audio=audio,
                    sample_rate=info.sample_rate,
                    seed=seed,
                    generate_s=per_request_s[i],
                    peak_memory_bytes=peak,
                    model=info,
                    request=req,
                    decoder=backend.name,
                    reproducibility=repro,
                    continued_s=prefix.get(i, 0) / framing.frame_rate,
                )
            )
        if record:
            self._record(results, info, peak)
        return results

    def _record(self, results: list[GenerationResult], info: LoadedModelInfo, peak: int) -> None:
        """Job counters and the one performance line per generation."""
        for res in results:
            self._stats.jobs += 1
            self._stats.audio_seconds += res.audio_seconds
            self._stats.generate_seconds += res.generate_s
            log.info(
                "generated %d x %.2f s (%s) in %.2f s: RTF %.3f, seed %d, peak memory %.0f MiB",
                res.audio.shape[0],
                res.audio.shape[-1] / res.sample_rate,
                info.name,
                res.generate_s,
                res.rtf,
                res.seed,
                peak / 2**20,
            )
        if self._stats.audio_seconds > 0:
            self._stats.mean_rtf = self._stats.generate_seconds / self._stats.audio_seconds
        self._peak = max(self._peak, peak)
        self._stats.peak_memory_bytes = self._peak

    def _framing(self) -> Framing:
        assert self._info is not None
        return Framing.of(self._info, self.settings)

    def frames_for(self, duration: float) -> int:
        """Codec frames covering `duration` seconds at the loaded model's own frame rate."""
        return self._framing().frames_for(duration)

    def samples_for(self, duration: float) -> int:
        return self._framing().samples_for(duration)

    # ------------------------------------------------------------ stats

    def get_stats(self) -> EngineStats:
        return replace(self._stats, last_used_monotonic=self._last_used, loaded=self._info is not None)


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)
