"""Long form: clips past the model's context window by windowed continuation (audiocraft's extend_stride).

The first window generates `window` frames from the text alone. Each next window is prompted with
the last `window - stride` frames already generated and adds up to `stride` new frames, so every
new frame sees `window - stride` frames of context (defaults: 30 s window, 18 s stride, 12 s of
overlap context; `window_s` / `extend_stride_s` in the config). The codes are concatenated and
the whole sequence goes through the audio codec in one pass, so the waveform has no seams.

Two generalisations ride on the same loop. A continuation starts from prefix codes (a reference's
last seconds, at most `window - stride` frames): the first window continues from them as a later
window would, and the result starts with them. A piece with sections is planned segment by segment:
a window never crosses into the next section, so each window is conditioned on the text of the
section its new frames belong to, while its context still reaches back into the section before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from daemon.core.messages import SEED_MOD
from daemon.engine.decoding.api import DecodeBackend, DecodeRequest
from daemon.engine.decoding.codec import delay_steps

# Later windows use their own random stream: an odd 63-bit constant (golden ratio) per window
# keeps window w of variation i away from every other variation's streams.
_WINDOW_SEED_STEP = 0x1E3779B97F4A7C15

# Text conditioning of one segment: (input_ids [B, L], attention_mask [B, L]).
SegmentText = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class WindowPlan:
    """One decode call: continue from `context` frames, produce `new` frames of segment `segment`."""

    context: int
    new: int
    segment: int = 0


def plan_segments(
    segment_frames: Sequence[int], window_frames: int, stride_frames: int, *, prefix: int = 0
) -> list[WindowPlan]:
    """The decode calls that produce exactly sum(segment_frames) new frames after `prefix` given ones.

    Each call continues from up to `window - stride` frames (all there are, early on) and stays
    inside one segment; segments of 0 frames (covered by the prefix) get no call.
    """
    if not 0 < stride_frames < window_frames:
        raise ValueError(f"need 0 < stride ({stride_frames}) < window ({window_frames}) frames")
    overlap = window_frames - stride_frames
    if not 0 <= prefix <= overlap:
        raise ValueError(f"prefix of {prefix} frames must be within 0..{overlap} (window - stride)")
    if sum(segment_frames) < 1 or any(f < 0 for f in segment_frames):
        raise ValueError("segments must add up to at least 1 frame, none negative")
    plans: list[WindowPlan] = []
    have = prefix
    for s, frames in enumerate(segment_frames):
        left = frames
        while left > 0:
            context = min(have, overlap)
            new = min(left, window_frames - context)
            plans.append(WindowPlan(context=context, new=new, segment=s))
            have += new
            left -= new
    return plans


def planned_steps(model: Any, plans: list[WindowPlan]) -> int:
    """Decoding steps the plan costs (each call pays the delay pattern once more)."""
    return sum(p.new + delay_steps(model) for p in plans)


def decode_long(
    backend: DecodeBackend,
    model: Any,
    req: DecodeRequest,
    *,
    window_frames: int,
    stride_frames: int,
    on_step: Callable[[int, int], None] | None = None,
    segments: Sequence[int] | None = None,
    texts: Sequence[SegmentText] | None = None,
) -> torch.Tensor:
    """Codes [B, K, P + req.max_frames]: `req.prompt_codes` (P frames, none by default) and then
    req.max_frames new frames, through as many windows as needed.

    `segments` (new frames per segment, summing to req.max_frames) with `texts` (the text
    conditioning of each segment) plan a piece with sections; by default one segment uses the
    request's own text. `on_step(done, total)` counts steps over all windows.
    """
    segments = list(segments) if segments is not None else [req.max_frames]
    prefix = 0 if req.prompt_codes is None else int(req.prompt_codes.shape[-1])
    plans = plan_segments(segments, window_frames, stride_frames, prefix=prefix)
    total, base = planned_steps(model, plans), 0
    codes: torch.Tensor | None = req.prompt_codes
    for w, plan in enumerate(plans):
        call_steps = plan.new + delay_steps(model)

        def step_cb(step: int, call_total: int, base: int = base, call_steps: int = call_steps) -> None:
            if on_step is not None:
                # Backends report their own totals; rescale so the job's count is monotonic.
                on_step(base + round(step * call_steps / max(call_total, 1)), total)

        rows = [replace(r, seed=(r.seed + w * _WINDOW_SEED_STEP) % SEED_MOD) for r in req.rows]
        prompt = None if codes is None or plan.context == 0 else codes[..., codes.shape[-1] - plan.context :]
        window_req = replace(req, rows=rows, max_frames=plan.new, prompt_codes=prompt, on_step=step_cb)
        if texts is not None:
            ids, mask = texts[plan.segment]
            window_req = replace(window_req, input_ids=ids, attention_mask=mask)
        new = backend.decode(model, window_req)
        codes = new if codes is None else torch.cat([codes, new.to(codes.device)], dim=-1)
        base += call_steps
    assert codes is not None
    return codes
