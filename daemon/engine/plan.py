"""How one `generate` call is cut into decode batches: seeds, rows, chunks and their step counts.

Every job gets an effective seed (given, or drawn from os.urandom) and variation i uses seed + i.
Rows that may share a decode call (same sampling, seeds aside; same guidance and length) are
grouped into chunks of at most `max_batch` rows. With a backend that has one random stream per
call (transformers `generate`) only rows of the same job share a chunk, so a job's audio never
depends on which other jobs were queued with it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from daemon.core.config import Settings
from daemon.core.messages import SEED_MOD, GenerationRequest, LoadedModelInfo
from daemon.engine.decoding.api import RowSampling
from daemon.engine.longform import plan_windows, planned_steps


@dataclass
class Row:
    """One output: variation `variation` of request `req_index`."""

    req_index: int
    variation: int
    sampling: RowSampling


@dataclass
class Chunk:
    """Rows decoded together: same sampling (seeds aside), guidance and length."""

    rows: list[Row]
    prompts: list[str]
    cfg_coef: float
    frames: int
    samples: int  # exact output length: round(duration * sample_rate)


@dataclass(frozen=True)
class Framing:
    """Seconds to codec frames and samples at the loaded model's own rates, and the long-form window."""

    frame_rate: float
    sample_rate: int
    window: int  # frames per long-form window
    stride: int  # new frames per later window

    @classmethod
    def of(cls, info: LoadedModelInfo, settings: Settings) -> Framing:
        window = max(2, int(round(settings.window_s * info.frame_rate)))
        stride = min(window - 1, max(1, int(round(settings.extend_stride_s * info.frame_rate))))
        return cls(frame_rate=info.frame_rate, sample_rate=info.sample_rate, window=window, stride=stride)

    def frames_for(self, duration: float) -> int:
        """Codec frames covering `duration` seconds."""
        return max(1, math.ceil(duration * self.frame_rate - 1e-9))

    def samples_for(self, duration: float) -> int:
        return int(round(duration * self.sample_rate))

    def steps(self, model: Any, chunk: Chunk) -> int:
        """Decoding steps `chunk` costs through the long-form windows."""
        return planned_steps(model, plan_windows(chunk.frames, self.window, self.stride))


def row_sampling(req: GenerationRequest, seed: int) -> RowSampling:
    """The decode backend's view of one row of `req`."""
    return RowSampling(
        temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, greedy=req.greedy, seed=seed
    )


def random_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") % SEED_MOD


def effective_seeds(requests: Sequence[GenerationRequest]) -> list[int]:
    """Each request's seed, or a fresh random one (recorded in its result)."""
    return [r.seed if r.seed is not None else random_seed() for r in requests]


def plan_chunks(
    requests: Sequence[GenerationRequest],
    seeds: Sequence[int],
    framing: Framing,
    *,
    max_batch: int,
    per_row_seeds: bool,
) -> list[Chunk]:
    """Rows grouped into decode batches: same sampling, guidance and length, at most max_batch rows.

    `per_row_seeds`: the backend gives every row its own random stream, so rows of different
    requests may share a batch; otherwise each request is batched alone.
    """
    groups: dict[tuple[Any, ...], list[tuple[Row, str]]] = {}
    for i, (req, seed) in enumerate(zip(requests, seeds)):
        frames, samples = framing.frames_for(req.duration), framing.samples_for(req.duration)
        for v in range(req.count):
            row = Row(i, v, row_sampling(req, (seed + v) % SEED_MOD))
            key = (row.sampling.without_seed(), req.cfg_coef, frames, samples) + (() if per_row_seeds else (i,))
            groups.setdefault(key, []).append((row, req.prompt))
    chunks = []
    for key, members in groups.items():
        cfg_coef, frames, samples = key[1], key[2], key[3]
        for k in range(0, len(members), max_batch):
            part = members[k : k + max_batch]
            chunks.append(Chunk([r for r, _ in part], [p for _, p in part], cfg_coef, frames, samples))
    return chunks
