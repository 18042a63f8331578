"""The music engine: one resident model at a time that turns prompts into audio arrays.

Entry points: `load_model`, `unload_model`, `set_generation_params`, `generate`, `get_stats`
(`save_audio` and `benchmark` are in `daemon.ops.facade`). It knows no model family, only the seam
(`daemon.engine.family`). A reloaded configuration (`reconfigure`) takes effect between calls:
when anything the resident model's setup rests on changed, it is loaded again before the next.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any

import torch

from daemon.core.config import Settings
from daemon.core.errors import DgxMusicError, ModelLoadError
from daemon.core.logctx import job_context
from daemon.core.messages import (
    EngineStats,
    GenerationRequest,
    GenerationResult,
    LoadedModelInfo,
    Progress,
    setup_summary,
)
from daemon.engine.checkpoints import resolve_spec
from daemon.engine.devices import peak_memory_bytes, reset_peak_memory, resolve_device, resolve_dtype
from daemon.engine.family import LoadedFamily, StepClock, decode_call, effective_seeds
from daemon.engine.registry import family_for

log = logging.getLogger(__name__)


class MusicEngine:
    """One resident model at a time (loading another unloads the first); thread-safe entry points."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # A decode loop that replaces the configured one: set only by `testseam.decode_with`.
        self._loop: Any = None
        self._lock = threading.RLock()
        self._model: LoadedFamily | None = None
        self._device: torch.device | None = None
        self._loaded_from: tuple[Any, ...] | None = None  # what the resident model was resolved from
        self._load_s = 0.0
        self._defaults: dict[str, Any] = {}
        self._last_used: float | None = None
        self._stats = EngineStats(None, None, None, None, None, 0, None)

    @property
    def info(self) -> LoadedModelInfo | None:
        """The resident model's facts and decode setup, with its load time."""
        return None if self._model is None else replace(self._model.info, load_s=self._load_s)

    @property
    def loaded(self) -> LoadedFamily | None:
        """The resident model, as its family loaded it."""
        return self._model

    def is_loaded(self, name: str | None = None) -> bool:
        """Whether `name` (any model: None) is resident as the current settings would load it."""
        info = self.info
        if info is None:
            return False
        return name is None or (info.name == name and self._loaded_from == self._resolved_from(name))

    def reconfigure(self, settings: Settings) -> None:
        """A reloaded configuration: used from the next call on (the running one keeps its own);
        the resident model is loaded again then when anything its setup rests on changed."""
        self.settings = settings

    def _resolved_from(self, name: str) -> tuple[Any, ...]:
        """What the resident model's load and setup rest on: a change reloads it."""
        s, spec = self.settings, self.settings.models.get(name)
        decode = (
            s.decoder,
            s.kernels,
            s.batch_invariant,
            s.compile,
            s.max_batch,
            s.window_s,
            s.extend_stride_s,
        )
        entry = spec.model_dump() if spec is not None else None
        return (name, entry, s.device, s.dtype, *decode, id(self._loop))

    def load_model(self, name: str | None = None) -> LoadedModelInfo:
        """Load `name` (default: the config's default_model) unless it is already resident, as
        the current settings would load it."""
        name = name or self.settings.default_model
        with self._lock:
            if self._model is None or self._loaded_from != self._resolved_from(name):
                self._load(name)
            info = self.info
            assert info is not None
            return info

    def _load(self, name: str) -> None:
        resolve_spec(name, self.settings)  # unknown names fail before anything is unloaded
        self.unload_model()
        t0 = time.monotonic()
        device = resolve_device(self.settings.device)
        dtype = resolve_dtype(self.settings.dtype, device)
        model = family_for(name, self.settings).load(name, self.settings, device, dtype, loop=self._loop)
        self._model, self._device = model, device
        try:
            if self.settings.warmup:
                model.warm_up()
        except BaseException as exc:
            self.unload_model()
            if isinstance(exc, DgxMusicError):
                raise ModelLoadError(
                    f"model {name!r} loaded but its warm-up generation failed: {exc.message}",
                    hint=exc.hint or "run `dgx-music doctor`; try dtype float32 or another device",
                ) from exc
            raise
        self._loaded_from = self._resolved_from(name)
        self._load_s = time.monotonic() - t0
        self._last_used = time.monotonic()
        self._note_load(replace(model.info, load_s=self._load_s))

    def _note_load(self, info: LoadedModelInfo) -> None:
        """Job counters span the engine's life; the model fields describe the resident model."""
        facts = {
            k: getattr(info, k) for k in ("source", "revision", "device", "dtype", "parameters", "backend")
        }
        self._stats = replace(self._stats, model=info.name, loads=self._stats.loads + 1, **facts)
        decoder = setup_summary(info.setup.report()) if info.setup else info.backend
        log.info(
            "model %s loaded from %s (revision %s) on %s/%s: %.1fM parameters, %d Hz, %d channel(s), "
            "%.2f frames/s, decoder %s, %.1f s",
            *(info.name, info.source, info.revision, info.device, info.dtype, info.parameters / 1e6),
            *(info.sample_rate, info.channels, info.frame_rate, decoder, info.load_s),
        )

    def unload_model(self) -> None:
        """Drop the model and give its memory back (GPU memory included)."""
        with self._lock:
            model = self._model
            if model is None:
                return
            name = model.info.name
            device = self._device
            self._model = self._loaded_from = None
            model.unload()
            del model
            gc.collect()
            if device is not None and device.type == "cuda":
                torch.cuda.empty_cache()
            log.info("model %s unloaded", name)

    def maybe_idle_unload(self, now: float | None = None) -> bool:
        """Unload when idle for `idle_unload_s` (0: never). Never blocks a running generation."""
        limit = self.settings.idle_unload_s
        now = time.monotonic() if now is None else now
        if limit <= 0 or not self._lock.acquire(blocking=False):
            return False
        try:
            if self._model is None or self._last_used is None or now - self._last_used < limit:
                return False
            log.info("model idle for %.0f s (idle_unload_s=%.0f): unloading", now - self._last_used, limit)
            self.unload_model()
            return True
        finally:
            self._lock.release()

    def set_generation_params(self, **defaults: Any) -> None:
        """Defaults for `request()`: any GenerationRequest field but prompt."""
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
        job_ids: Sequence[str] | None = None,
    ) -> list[GenerationResult]:
        """Audio for each request (one result per request, in order). `job_ids` (one per
        request) put each request's own job id on its log line, when several are decoded at once.

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
                clock = StepClock(progress, cancel, timeout_s)
                results = self._generate_locked(list(requests), clock, job_ids)
            except BaseException:
                self._stats.failed_jobs += len(requests)
                raise
            finally:
                self._last_used = time.monotonic()
            return results

    def _generate_locked(
        self, requests: list[GenerationRequest], clock: StepClock, job_ids: Sequence[str] | None = None
    ) -> list[GenerationResult]:
        assert self._model is not None and self._device is not None
        loaded = self._model
        seeds = effective_seeds(requests)
        reset_peak_memory(self._device)
        with torch.inference_mode():
            audio_rows, per_request_s, batches = decode_call(
                loaded, requests, seeds, clock, self.settings.state_dir
            )
        peak = peak_memory_bytes(self._device)
        info = loaded.info
        repro = loaded.reproducibility()
        continued = {b.rows[0].req_index: b.continued_s for b in batches if b.continued_s}
        results = []
        for i, (req, seed) in enumerate(zip(requests, seeds)):
            results.append(
                GenerationResult(
                    rows=tuple(audio_rows[(i, v)] for v in range(req.count)),
                    sample_rate=info.sample_rate,
                    seed=seed,
                    generate_s=per_request_s[i],
                    peak_memory_bytes=peak,
                    model=info,
                    request=req,
                    decoder=info.backend,
                    reproducibility=repro,
                    continued_s=continued.get(i, 0.0),
                    adapter=loaded.adapter_record(req),
                )
            )
        self._record(results, info, peak, job_ids)
        return results

    def _record(
        self, results: list[GenerationResult], info: LoadedModelInfo, peak: int, job_ids: Sequence[str] | None
    ) -> None:
        """Job counters and the one performance line per generation, under its own job's id."""
        for i, res in enumerate(results):
            self._stats.jobs += 1
            self._stats.audio_seconds += res.audio_seconds
            self._stats.generate_seconds += res.generate_s
            with job_context(job_id=job_ids[i], batch=()) if job_ids else contextlib.nullcontext():
                log.info(
                    "generated %d x %.2f s (%s) in %.2f s: RTF %.3f, seed %d, peak memory %.0f MiB",
                    *(len(res.rows), res.samples / res.sample_rate, info.name, res.generate_s),
                    *(res.rtf, res.seed, peak / 2**20),
                )
        if self._stats.audio_seconds > 0:
            self._stats.mean_rtf = self._stats.generate_seconds / self._stats.audio_seconds
        self._stats.peak_memory_bytes = max(self._stats.peak_memory_bytes, peak)

    def get_stats(self) -> EngineStats:
        return replace(self._stats, last_used_monotonic=self._last_used, loaded=self._model is not None)
