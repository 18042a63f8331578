"""ACE-Step 1.5 behind the engine's family seam (`daemon.engine.family`).

`AceStep` serves the configured models whose family is ace-step (configured, or read from the
checkpoint: `daemon.core.families`); `AceStepModel` is one resident pipeline. A call's rows are
grouped into batches that may share a pipeline call (`song` says when), each batch is rendered
with per-row seeds, the step clock advanced after every denoising step (progress, cancel,
timeout), and an out-of-memory error splits the batch in halves once.

Its decode setup: `rows`, the fixed row count of every call. batch_invariant on: max_batch rows
(rows of other jobs, or copies, fill a call, so a row's arithmetic never depends on its mates);
auto: max_batch rows on CUDA, one row at a time on the CPU (the same promise at the cost of
batching); off: the rows a batch has, and a row's last bits may depend on its mates. `compile`:
whether the DiT runs under torch.compile (`compiled`): on, off, or failed with its reason (a
compile that raises, at the warm-up or at a later call, leaves the DiT eager from then on).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from daemon.core.config import Settings
from daemon.core.errors import (
    DgxMusicError,
    GenerationError,
    InvalidJobError,
    ModelLoadError,
    OutOfMemoryError,
)
from daemon.core.families import ACE_STEP
from daemon.core.messages import DecodeSetup, GenerationRequest, LoadedModelInfo
from daemon.engine.acestep.adapters import Adapters
from daemon.engine.acestep.checkpoint import NETWORKS, LoadedPipeline, load_pipeline
from daemon.engine.acestep.compiled import ON, CompiledDit, compile_error, compile_mode, is_compile_error
from daemon.engine.acestep.song import (
    MAX_LYRIC_TOKENS,
    SHIFT,
    SongBatch,
    SongParams,
    SongRow,
    SourceEdit,
    calls,
    default_guidance,
    default_steps,
    render,
    token_counts,
)
from daemon.engine.family import SEED_MOD, StepClock, decode_call
from daemon.engine.resample import to_rate_and_channels

log = logging.getLogger(__name__)

DECODER = "diffusers"


class AceStep:
    """The ACE-Step 1.5 family: configured models whose checkpoint is an AceStepPipeline."""

    name = ACE_STEP

    def load(
        self, name: str, settings: Settings, device: torch.device, dtype: torch.dtype, *, loop: Any = None
    ) -> AceStepModel:
        try:
            loaded = load_pipeline(name, settings, device=device, dtype=dtype)
        except DgxMusicError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"model {name!r}: cannot load the ACE-Step checkpoint: {type(exc).__name__}: {exc}",
                hint="the checkpoint is damaged or from an incompatible version: copy or download it again",
            ) from exc
        return AceStepModel(name, settings, loaded, device)


def fixed_rows(settings: Settings, device: torch.device) -> int | None:
    """The row count of every pipeline call (None: as many as the batch has)."""
    if settings.batch_invariant == "on" or (settings.batch_invariant == "auto" and device.type == "cuda"):
        return settings.max_batch
    if settings.batch_invariant == "auto":
        return 1
    return None


class AceStepModel:
    """A resident ACE-Step pipeline (a `family.LoadedFamily`)."""

    def __init__(self, name: str, settings: Settings, loaded: LoadedPipeline, device: torch.device) -> None:
        self.settings, self.loaded, self.device = settings, loaded, device
        pipe = loaded.pipe
        self.rows = fixed_rows(settings, device)
        self.adapters = Adapters(
            name, pipe, settings.models[name].adapters if name in settings.models else {}
        )
        self._setup = DecodeSetup(
            ACE_STEP,
            DECODER,
            compile=compile_mode(settings, device),
            rows=self.rows,
            batch_invariant=self.rows is not None,
            fallback=None,
        )
        self._dit: CompiledDit | None = None
        if self._setup.compile == ON:
            try:
                self._dit = CompiledDit(pipe.transformer)
            except Exception as exc:  # torch.compile refuses this interpreter or build up front
                self._setup = self._setup.with_compile_failed(_eager_from_now(exc))
        self._info = LoadedModelInfo(
            name=name,
            source=loaded.source,
            revision=loaded.revision,
            dtype=str(pipe.transformer.dtype).removeprefix("torch."),
            device=str(device),
            parameters=int(sum(p.numel() for net in NETWORKS for p in getattr(pipe, net).parameters())),
            sample_rate=int(pipe.sample_rate),
            channels=int(pipe.vae.config.audio_channels),
            frame_rate=float(pipe.latents_per_second),
            load_s=0.0,
            backend=DECODER,
            setup=self._setup,
            family=ACE_STEP,
            license=loaded.license,
        )

    @property
    def info(self) -> LoadedModelInfo:
        return self._info

    @property
    def setup(self) -> DecodeSetup:
        return self._setup

    def warm_up(self) -> None:
        """One short song through every part (text encoder, condition encoder, DiT, VAE); with the
        DiT compiled, the compile happens here, at the row counts jobs run at (the fixed rows, or
        one row and several: a single row compiles apart from a batch), so no job pays it."""
        t0 = time.monotonic()
        counts = (
            [1]
            if self.rows is not None or self._dit is None
            else sorted({1, min(2, self.settings.max_batch)})
        )
        with torch.inference_mode():
            for count in counts:
                request = GenerationRequest("warm up", 1.0, count=count, seed=0)
                decode_call(self, [request], [0], StepClock())
        log.info("warm-up song of 1.0 s took %.2f s (compile %s)", time.monotonic() - t0, self._setup.compile)

    def _params(self, req: GenerationRequest) -> SongParams:
        turbo = self.loaded.turbo
        guidance = getattr(req, "guidance", None)
        if guidance is not None and turbo:
            raise InvalidJobError(
                f"model {self._info.name!r} is a turbo checkpoint: its guidance is distilled into the "
                "weights and a `guidance` would be ignored",
                loc="guidance",
                hint="leave `guidance:` out, or name a base (non-turbo) ACE-Step model",
            )
        ts = req.time_signature
        return SongParams(
            duration=float(req.duration),
            steps=int(getattr(req, "steps", None) or default_steps(turbo)),
            guidance=float(guidance if guidance is not None else default_guidance(turbo)),
            shift=SHIFT,
            bpm=req.bpm,
            keyscale=req.key,
            # ACE-Step reads a metre as its beats per bar ("4" for 4/4, "6" for 6/8).
            timesignature=ts.split("/")[0] if ts else None,
        )

    def plan(self, requests: Sequence[GenerationRequest], seeds: Sequence[int]) -> list[SongBatch]:
        """Rows grouped by what a call shares (the song's parameters, prompt and lyric token
        counts), at most max_batch rows a batch."""
        pipe = self.loaded.pipe
        groups: dict[tuple[Any, ...], list[SongRow]] = {}
        params_of: dict[tuple[Any, ...], SongParams] = {}
        edits: list[SongBatch] = []
        for i, (req, seed) in enumerate(zip(requests, seeds)):
            if req.edit is not None:
                edits.extend(self._edit_batches(i, req, seed))
                continue
            if req.conditioned:
                key = "sections" if req.sections else "melody" if req.melody is not None else "continue_from"
                raise InvalidJobError(
                    f"model {self._info.name!r} is an ACE-Step model and cannot honour {key!r}",
                    loc=key,
                    hint=f"name a MusicGen model for {key!r}",
                )
            params = self._params(req)
            adapter = self.adapters.wanted(req)
            lyrics = getattr(req, "lyrics", None) or ""
            language = getattr(req, "language", None) or "en"
            first = SongRow(i, 0, seed % SEED_MOD, req.prompt, lyrics, language)
            counts = token_counts(pipe, params, first)
            if counts[1] > MAX_LYRIC_TOKENS:
                raise InvalidJobError(
                    f"the lyrics take {counts[1]} tokens; model {self._info.name!r} reads at most "
                    f"{MAX_LYRIC_TOKENS}",
                    loc="lyrics",
                    hint="shorten the lyrics, or split the song into several jobs",
                )
            key = (params, counts, adapter)
            params_of[key] = params
            for v in range(req.count):
                groups.setdefault(key, []).append(
                    SongRow(i, v, (seed + v) % SEED_MOD, req.prompt, lyrics, language)
                )
        cap = self.settings.max_batch
        return [
            SongBatch(params_of[key], rows[k : k + cap], adapter=key[2])
            for key, rows in groups.items()
            for k in range(0, len(rows), cap)
        ] + edits

    def _edit_batches(self, i: int, req: GenerationRequest, seed: int) -> list[SongBatch]:
        """A request that edits a source: its own batches (one per extracted track), the song as
        long as the source, which is brought to the pipeline's rate and channels."""
        edit = req.edit
        assert edit is not None
        info = self._info
        audio = to_rate_and_channels(
            edit.source.samples, edit.source.sample_rate, info.sample_rate, info.channels
        )
        duration = audio.shape[-1] / info.sample_rate
        if edit.kind in ("repaint", "lego") and (
            edit.start >= duration or (edit.end is not None and edit.end > duration + 1e-6)
        ):
            raise InvalidJobError(
                f"the repaint range {edit.start:g}..{'end' if edit.end is None else f'{edit.end:g}'} s lies "
                f"outside the source, which is {duration:.3f} s long",
                loc=edit.kind,
                hint=f"keep start and end within 0..{duration:.3f} s (leave `end` out for the source's end)",
            )
        if edit.kind == "cover" and getattr(self.loaded.pipe, "audio_tokenizer", None) is None:
            raise InvalidJobError(
                f"model {info.name!r} has no audio tokenizer, which a cover reads its source through",
                loc="cover",
                hint="name an ACE-Step checkpoint with its audio tokenizer (the released 1.5 checkpoints "
                "have one), or use `repaint` with the whole range",
            )
        params = replace(self._params(req), duration=duration)
        classes = edit.tracks if edit.kind == "complete" else ()
        source = SourceEdit(
            edit.kind, audio, start=edit.start, end=edit.end, strength=edit.strength, classes=classes
        )
        lyrics = getattr(req, "lyrics", None) or ""
        language = getattr(req, "language", None) or "en"
        tracks: list[str | None] = (
            list(edit.tracks)
            if edit.kind == "extract"
            else [edit.tracks[0] if edit.kind == "lego" else None] * req.count
        )
        rows = [
            SongRow(i, v, (seed + v) % SEED_MOD, req.prompt, lyrics, language, track=t)
            for v, t in enumerate(tracks)
        ]
        if token_counts(self.loaded.pipe, params, rows[0])[1] > MAX_LYRIC_TOKENS:
            raise InvalidJobError(
                f"the lyrics are longer than model {info.name!r} reads ({MAX_LYRIC_TOKENS} tokens)",
                loc="lyrics",
                hint="shorten the lyrics",
            )
        adapter = self.adapters.wanted(req)
        if edit.kind == "extract":
            # Each track has its own instruction: a call of its own.
            return [SongBatch(params, [row], edit=source, adapter=adapter) for row in rows]
        cap = self.settings.max_batch
        return [
            SongBatch(params, rows[k : k + cap], edit=source, adapter=adapter)
            for k in range(0, len(rows), cap)
        ]

    def steps(self, batch: SongBatch) -> int:  # type: ignore[override]
        return batch.params.steps * calls(len(batch.rows), self.rows)

    def decode(self, batch: SongBatch, clock: StepClock) -> list[np.ndarray]:  # type: ignore[override]
        """Audio per row; on CUDA out-of-memory: free the cache, render the halves, once."""
        # Between calls, on the thread that decodes: an adapter never changes under a running call.
        self.adapters.use(batch.adapter)
        base = clock.done
        try:
            return self._render(batch, clock, base, self.rows)
        except torch.OutOfMemoryError as exc:
            self.release()
            if len(batch.rows) == 1:
                raise OutOfMemoryError(
                    f"out of memory rendering {batch.params.duration:g} s on {self.device}",
                    hint="shorten the song, free GPU memory, or use dtype bfloat16",
                ) from exc
            half = max(1, len(batch.rows) // 2)
            log.warning(
                "out of memory with %d rows: retrying as %d + %d",
                len(batch.rows),
                half,
                len(batch.rows) - half,
            )
            out: list[np.ndarray] = []
            for part in (batch.rows[:half], batch.rows[half:]):
                sub = SongBatch(batch.params, list(part))
                try:
                    out.extend(self._render(sub, clock, clock.done, min(self.rows or half, half)))
                except torch.OutOfMemoryError as exc2:
                    self.release()
                    raise OutOfMemoryError(
                        "out of memory even after splitting the batch "
                        f"({len(part)} of {len(batch.rows)} rows)",
                        hint="lower max_batch or count, shorten the song, or free GPU memory",
                    ) from exc2
            return out

    def _render(self, batch: SongBatch, clock: StepClock, base: int, rows: int | None) -> list[np.ndarray]:
        try:
            return render(
                self.loaded.pipe,
                batch,
                on_step=lambda done: clock.advance(base + done),
                fixed_rows=rows,
                dit=self._dit,
            )
        except (DgxMusicError, torch.OutOfMemoryError):
            raise
        except BaseException as exc:
            if clock.callback_error is not None and exc is clock.callback_error:
                raise
            if self._dit is not None and is_compile_error(exc):
                self._run_eager(exc)
                return self._render(batch, clock, base, rows)
            if isinstance(exc, Exception):
                raise GenerationError(f"generation failed: {type(exc).__name__}: {exc}") from exc
            raise

    def _run_eager(self, exc: BaseException) -> None:
        """A compile failed: the DiT runs eager from now on, and the setup says why."""
        self._dit = None
        self._setup = self._setup.with_compile_failed(_eager_from_now(exc))
        self._info = replace(self._info, setup=self._setup)

    def adapter_record(self, request: GenerationRequest) -> dict[str, Any] | None:
        return self.adapters.record(request)

    def reproducibility(self) -> dict[str, Any]:
        if self.rows is not None:
            return {
                "batch_mates": "independent",
                "by_construction": True,
                "basis": f"every ACE-Step call runs at {self.rows} fixed row(s), each row with its own "
                "seeded noise, so a song is the same alone or batched with others"
                + (
                    "; the DiT runs compiled, the same kernels for every call"
                    if self._dit is not None
                    else ""
                ),
            }
        return {
            "batch_mates": "may_differ",
            "by_construction": False,
            "basis": "batch_invariant is off: rows share calls of varying size, and the last bits of a song "
            "may depend on how many rows shared its call",
        }

    def release(self) -> None:
        """After an out-of-memory error: nothing is kept resident between calls but the weights."""
        _free(self.device)

    def unload(self) -> None:
        self.loaded = None  # type: ignore[assignment]
        _free(self.device)


def _eager_from_now(exc: BaseException) -> str:
    """The reason a compile failed, logged once: the DiT runs eager from here on."""
    reason = compile_error(exc)
    log.warning(
        "the ACE-Step DiT could not be compiled (%s): it runs eager (slower); set `compile: off` "
        "to skip the attempt",
        reason,
    )
    return reason


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
