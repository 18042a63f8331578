"""The engine's model-family seam: what a family of checkpoints gives the engine, and nothing more.

`daemon.engine.model.MusicEngine` knows no family: `daemon.engine.registry.family_for` names the
family of a configured model, that family's `load` returns a `LoadedFamily`, and the engine then
only warms it up, plans a call's rows, decodes them batch by batch and reads the audio and the
reproducibility facts. Later stages see only `daemon.core.messages` values, so spool/, queue/ and
outbox/ treat every family alike. MusicGen (`daemon.engine.musicgen`) is the first family,
ACE-Step 1.5 (`daemon.engine.acestep`) the second; docs/design.md says how another plugs in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from daemon.core.errors import GenerationCancelled, GenerationTimeoutError
from daemon.core.messages import SEED_MOD, DecodeSetup, GenerationRequest, LoadedModelInfo, Progress
from daemon.core.pcm import Pcm

if TYPE_CHECKING:
    import threading

    import numpy as np
    import torch

    from daemon.core.config import Settings


class RowRef(Protocol):
    """One output row: variation `variation` of request `req_index`."""

    @property
    def req_index(self) -> int: ...

    @property
    def variation(self) -> int: ...


class RowBatch(Protocol):
    """Rows decoded together in one call (a family's own plan type satisfies this)."""

    @property
    def rows(self) -> Sequence[RowRef]: ...

    @property
    def continued_s(self) -> float: ...  # seconds of `continue_from` audio the rows start with


class StepClock:
    """One `generate` call's step count, progress reports, cancel and time limit, shared by its
    batches (none of the three: a warm-up's clock)."""

    def __init__(
        self,
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.progress, self.cancel = progress, cancel
        self.start = time.monotonic()
        self.deadline = None if timeout_s is None else self.start + timeout_s
        self.total = self.done = 0
        self.callback_error: BaseException | None = None

    def check(self) -> None:
        """Raise when the call was cancelled or ran past its time limit."""
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelled("generation cancelled")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise GenerationTimeoutError(
                "generation ran past its time limit",
                hint="raise job_timeout_s in the config, or shorten the clip",
            )

    def advance(self, done: int) -> None:
        """`done` steps of the call are finished: check, then report progress (an exception of the
        progress callback is kept in `callback_error`, so the family can pass it through unchanged)."""
        self.done = max(self.done, done)
        self.check()
        if self.progress is not None:
            try:
                self.progress(Progress(self.done, self.total, time.monotonic() - self.start))
            except BaseException as exc:
                self.callback_error = exc
                raise


class LoadedFamily(Protocol):
    """A checkpoint of one family, resident on its device (what `ModelFamily.load` returns)."""

    @property
    def info(self) -> LoadedModelInfo: ...

    @property
    def setup(self) -> DecodeSetup: ...

    def warm_up(self) -> None: ...  # build what jobs will use, run one short generation

    def plan(self, requests: Sequence[GenerationRequest], seeds: Sequence[int]) -> Sequence[RowBatch]: ...

    def steps(self, batch: RowBatch) -> int: ...

    def decode(self, batch: RowBatch, clock: StepClock) -> Sequence[Pcm | np.ndarray]: ...

    def reproducibility(self) -> dict[str, object]: ...

    def adapter_record(self, request: GenerationRequest) -> dict[str, object] | None: ...  # its LoRA, if any

    def unload(self) -> None: ...


class ModelFamily(Protocol):
    """A family of checkpoints the engine can load (see the module docstring)."""

    name: str

    def load(
        self, name: str, settings: Settings, device: torch.device, dtype: torch.dtype, *, loop: Any = None
    ) -> LoadedFamily:
        """The checkpoint resident on `device` in `dtype`, its setup resolved from `settings`;
        `loop` replaces the configured decode loop (`testseam.decode_with`; a family without
        one ignores it)."""
        ...


def effective_seeds(requests: Sequence[GenerationRequest]) -> list[int]:
    """Each request's seed, or a fresh random one (recorded in its result)."""
    return [
        r.seed if r.seed is not None else int.from_bytes(os.urandom(8), "little") % SEED_MOD for r in requests
    ]


def decode_call(
    model: LoadedFamily,
    requests: Sequence[GenerationRequest],
    seeds: Sequence[int],
    clock: StepClock,
    directory: Path | None = None,
) -> tuple[dict[tuple[int, int], Pcm], list[float], list[RowBatch]]:
    """Every row of one call: audio by (request, variation), seconds spent per request, the batches.

    A row a family returns as an array is moved into a `Pcm` in `directory` (state/) at once."""
    batches = list(model.plan(requests, seeds))
    clock.total = sum(model.steps(b) for b in batches)
    audio: dict[tuple[int, int], Pcm] = {}
    spent = [0.0] * len(requests)
    for batch in batches:
        t0 = time.monotonic()
        for row, samples in zip(batch.rows, model.decode(batch, clock)):
            pcm = samples if isinstance(samples, Pcm) else Pcm.from_array(samples, directory)
            audio[(row.req_index, row.variation)] = pcm
        seconds = time.monotonic() - t0
        for i in {r.req_index for r in batch.rows}:
            spent[i] += seconds
    return audio, spent, batches
