"""MusicGen, the engine's first model family (`daemon.engine.family`).

A checkpoint is loaded by `daemon.engine.checkpoints` (hub or local directory, melody variants
included), its decode setup is resolved once by the chooser (`choose_setup`: the decode loop, its
load check, capture, fixed rows and kernels), and a call is cut into chunks by
`daemon.engine.plan` and decoded by `daemon.engine.run` (long-form windows, reference audio,
the out-of-memory split) with the loop of `daemon.engine.decoding`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from daemon.core.config import Settings
from daemon.core.errors import DgxMusicError, InvalidJobError, ModelLoadError
from daemon.core.messages import DecodeSetup, GenerationRequest, LoadedModelInfo
from daemon.core.pcm import Pcm
from daemon.engine.checkpoints import LoadedCheckpoint, load_checkpoint, melody_models
from daemon.engine.chooser import FAMILY, choose_setup, current_setup, reproducibility
from daemon.engine.decoding.api import DecodeBackend
from daemon.engine.decoding.codec import frame_rate
from daemon.engine.family import StepClock, decode_call
from daemon.engine.plan import Chunk, Framing, plan_chunks
from daemon.engine.run import ChunkRunner

log = logging.getLogger(__name__)


class MusicGen:
    """The MusicGen family (transformers' MusicgenForConditionalGeneration and its melody variant)."""

    name = FAMILY

    def load(
        self,
        name: str,
        settings: Settings,
        device: torch.device,
        dtype: torch.dtype,
        *,
        loop: DecodeBackend | None = None,
    ) -> MusicGenModel:
        """Load `name` and resolve its decode setup (`loop`: see `family.ModelFamily.load`)."""
        try:
            ckpt = load_checkpoint(name, settings, device=device, dtype=dtype)
        except DgxMusicError:
            raise
        except Exception as exc:
            # Loaders raise their own types (safetensors' SafetensorError on a damaged
            # header is none of OSError/ValueError): the daemon must still see a load failure.
            raise ModelLoadError(
                f"model {name!r}: cannot load the checkpoint: {type(exc).__name__}: {exc}",
                hint="the checkpoint is damaged or from an incompatible version: copy or download it again",
            ) from exc
        backend, setup = choose_setup(settings, ckpt, loop)
        return MusicGenModel(name, settings, ckpt, device, backend, setup)


class MusicGenModel:
    """A resident MusicGen checkpoint with its decode loop (a `family.LoadedFamily`)."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        ckpt: LoadedCheckpoint,
        device: torch.device,
        backend: DecodeBackend,
        setup: DecodeSetup,
    ) -> None:
        self.settings, self.ckpt, self.device, self.backend = settings, ckpt, device, backend
        self._setup = setup
        model = ckpt.model
        acfg = model.config.audio_encoder
        self._info = LoadedModelInfo(
            name=name,
            source=ckpt.source,
            revision=ckpt.revision,
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
            device=str(device),
            parameters=int(sum(p.numel() for p in model.parameters())),
            sample_rate=int(acfg.sampling_rate),
            channels=int(model.config.decoder.audio_channels),
            frame_rate=frame_rate(model),
            load_s=0.0,
            backend=setup.decoder,
            setup=setup,
            family=FAMILY,
            license=ckpt.license,
        )
        self.framing = Framing.of(self._info, settings)

    @property
    def info(self) -> LoadedModelInfo:
        setup = self.setup
        if setup != self._info.setup:
            self._info = replace(self._info, setup=setup, backend=setup.decoder)
        return self._info

    @property
    def setup(self) -> DecodeSetup:
        """The setup chosen at load, with a capture failure since then made visible."""
        return current_setup(self._setup, self.backend)

    def warm_up(self) -> None:
        """The decode buckets jobs use, then one short generation, so no job pays a capture or
        lazy initialisation."""
        prepare = getattr(self.backend, "prepare", None)
        if callable(prepare) and not self.ckpt.melody:
            # Full batches at the long-form window's length: every job up to the window uses it.
            prepare(self.ckpt.model, rows=self.settings.max_batch, frames=self.framing.window)
        seconds = min(1.0, self.settings.window_s)
        t0 = time.monotonic()
        with torch.inference_mode():
            decode_call(self, [GenerationRequest("warm up", seconds, seed=0)], [0], StepClock())
        log.info("warm-up generation of %.1f s took %.2f s", seconds, time.monotonic() - t0)

    def plan(self, requests: Sequence[GenerationRequest], seeds: Sequence[int]) -> list[Chunk]:
        for req in requests:
            if req.melody is not None and not self.ckpt.melody:
                raise _no_melody(self._info.name, self.settings)
        return plan_chunks(
            requests,
            seeds,
            self.framing,
            max_batch=self.settings.max_batch,
            per_row_seeds=bool(getattr(self.backend, "per_row_seeds", False)),
        )

    def steps(self, batch: Chunk) -> int:  # type: ignore[override]
        return self.framing.steps(self.ckpt.model, batch)

    def decode(self, batch: Chunk, clock: StepClock) -> list[Pcm]:  # type: ignore[override]
        return ChunkRunner(self.ckpt, self.device, self.backend, self.framing, self.settings.state_dir).run(
            batch, clock
        )

    def adapter_record(self, request: GenerationRequest) -> dict[str, Any] | None:
        return None  # MusicGen models take no adapters (admission refuses the key)

    def reproducibility(self) -> dict[str, Any]:
        return reproducibility(self.setup, self.backend, self.ckpt.model)

    def unload(self) -> None:
        getattr(self.backend, "reset", lambda: None)()  # backends may hold caches or captured graphs


def _no_melody(name: str, settings: Settings) -> InvalidJobError:
    melodic = melody_models(settings)
    return InvalidJobError(
        f"model {name!r} cannot follow a melody (it is not a musicgen-melody checkpoint)",
        loc="melody",
        hint=(
            f"use one of the melody models configured here: {', '.join(melodic)}"
            if melodic
            else "no melody model is configured here: ask the operator to add "
            "facebook/musicgen-melody to `models:`"
        )
        + ", or leave `melody:` out",
    )
