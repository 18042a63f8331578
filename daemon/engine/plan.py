"""How one `generate` call is cut into decode batches: seeds, rows, chunks and their step counts.

Variation i of a job uses its seed + i. A request with sections or reference audio
(continue_from, melody) is always a chunk of its own rows: its windows carry their own text,
prefix codes or chroma. With one random stream per call (transformers `generate`) only rows of
one job share a chunk, so a job's audio never depends on the jobs queued with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from daemon.core.config import Settings
from daemon.core.messages import SEED_MOD, AudioPrompt, GenerationRequest, LoadedModelInfo
from daemon.engine.decoding.api import RowSampling
from daemon.engine.longform import plan_segments, planned_steps
from jobspec.music import text_hint


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
    frames: int  # all frames of the result, a continuation's prefix included
    samples: int  # exact output length: round(duration * sample_rate)
    # Sections: the new frames of each segment and its text (empty: one segment, the rows' prompts).
    segments: tuple[int, ...] = ()
    segment_prompts: tuple[str, ...] = ()
    continue_from: AudioPrompt | None = None
    prefix_frames: int = 0  # frames of continue_from the result starts with
    melody: AudioPrompt | None = None
    continued_s: float = 0.0  # prefix_frames in seconds

    @property
    def new_frames(self) -> int:
        return self.frames - self.prefix_frames

    @property
    def segment_frames(self) -> tuple[int, ...]:
        return self.segments or (self.new_frames,)


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
        plans = plan_segments(chunk.segment_frames, self.window, self.stride, prefix=chunk.prefix_frames)
        return planned_steps(model, plans)

    def prefix_frames(self, reference_s: float, total_frames: int) -> int:
        """Frames of a continuation's reference the result starts with: its last seconds, at most
        the window minus the stride (the context a later window gets), leaving one frame to generate."""
        have = int(math.floor(reference_s * self.frame_rate + 1e-9))
        return max(0, min(have, self.window - self.stride, total_frames - 1))

    def conditioned(self, chunk: Chunk, req: GenerationRequest) -> Chunk:
        """`chunk` (rows of `req` alone) with the request's reference audio and sections planned."""
        prefix = 0
        if req.continue_from is not None:
            prefix = self.prefix_frames(req.continue_from.duration_s, chunk.frames)
        segments: tuple[int, ...] = ()
        prompts: tuple[str, ...] = ()
        if req.sections:
            bounds, t = [0], 0.0
            for _, seconds in req.sections:
                t += seconds
                bounds.append(min(chunk.frames, self.frames_for(t)))
            bounds[-1] = chunk.frames
            segments = tuple(max(0, hi - max(lo, prefix)) for lo, hi in zip(bounds, bounds[1:]))
            prompts = tuple(model_text(req, p) for p, _ in req.sections)
        return replace(
            chunk,
            segments=segments,
            segment_prompts=prompts,
            continue_from=req.continue_from if prefix else None,
            prefix_frames=prefix,
            melody=req.melody,
            continued_s=prefix / self.frame_rate,
        )


def model_text(req: GenerationRequest, text: str) -> str:
    """MusicGen's text for `text` of `req`: the asked tempo, key and metre appended as a hint
    (MusicGen has no other input for them and follows them only roughly)."""
    hint = text_hint(req.bpm, req.key, req.time_signature)
    return f"{text.rstrip().rstrip('.')}. {hint}" if hint else text


def row_sampling(req: GenerationRequest, seed: int) -> RowSampling:
    """The decode backend's view of one row of `req`."""
    return RowSampling(
        temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, greedy=req.greedy, seed=seed
    )


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
            alone = not per_row_seeds or req.conditioned
            key = (row.sampling.without_seed(), req.cfg_coef, frames, samples) + ((i,) if alone else ())
            groups.setdefault(key, []).append((row, model_text(req, req.prompt)))
    chunks = []
    for key, members in groups.items():
        cfg_coef, frames, samples = key[1], key[2], key[3]
        for k in range(0, len(members), max_batch):
            part = members[k : k + max_batch]
            chunk = Chunk([r for r, _ in part], [p for _, p in part], cfg_coef, frames, samples)
            req = requests[part[0][0].req_index]
            chunks.append(framing.conditioned(chunk, req) if req.conditioned else chunk)
    return chunks
