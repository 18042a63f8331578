"""Long form: clips past the model's context window by windowed continuation (audiocraft's extend_stride).

The first window generates `window` frames from the text alone. Each next window is prompted with
the last `window - stride` frames already generated and adds up to `stride` new frames, so every
new frame sees `window - stride` frames of context (defaults: 30 s window, 18 s stride, 12 s of
overlap context; `window_s` / `extend_stride_s` in the config). The codes are concatenated and
the whole sequence goes through the audio codec in one pass, so the waveform has no seams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from daemon.engine.decoding.api import DecodeBackend, DecodeRequest
from daemon.engine.decoding.codec import delay_steps

# Later windows use their own random stream: an odd 63-bit constant (golden ratio) per window
# keeps window w of variation i away from every other variation's streams.
_WINDOW_SEED_STEP = 0x1E3779B97F4A7C15
_SEED_MOD = 2**63


@dataclass(frozen=True)
class WindowPlan:
    """One decode call: continue from `context` frames, produce `new` frames."""

    context: int
    new: int


def plan_windows(total_frames: int, window_frames: int, stride_frames: int) -> list[WindowPlan]:
    """The decode calls that produce exactly `total_frames` frames."""
    if total_frames < 1:
        raise ValueError("total_frames must be at least 1")
    if not 0 < stride_frames < window_frames:
        raise ValueError(f"need 0 < stride ({stride_frames}) < window ({window_frames}) frames")
    first = min(total_frames, window_frames)
    plans = [WindowPlan(context=0, new=first)]
    have = first
    context = window_frames - stride_frames
    while have < total_frames:
        new = min(stride_frames, total_frames - have)
        plans.append(WindowPlan(context=context, new=new))
        have += new
    return plans


def planned_steps(model: Any, plans: list[WindowPlan]) -> int:
    """Decoding steps the plan costs (each call pays the delay pattern once more)."""
    return sum(p.new + delay_steps(model) for p in plans)


def window_seed(seed: int, window: int) -> int:
    return (seed + window * _WINDOW_SEED_STEP) % _SEED_MOD


def decode_long(
    backend: DecodeBackend,
    model: Any,
    req: DecodeRequest,
    *,
    window_frames: int,
    stride_frames: int,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Codes [B, K, req.max_frames] through as many windows as needed.

    `on_step(done, total)` counts steps over all windows. `req.prompt_codes` must be None (the
    plan's first window starts from text only).
    """
    if req.prompt_codes is not None:
        raise ValueError("decode_long starts from text; prompt_codes must be None")
    plans = plan_windows(req.max_frames, window_frames, stride_frames)
    total = planned_steps(model, plans)
    done = 0
    codes: torch.Tensor | None = None
    for w, plan in enumerate(plans):
        base = done
        call_steps = plan.new + delay_steps(model)

        def step_cb(step: int, call_total: int, base: int = base, call_steps: int = call_steps) -> None:
            if on_step is not None:
                # Backends report their own totals; rescale so the job's count is monotonic.
                on_step(base + round(step * call_steps / max(call_total, 1)), total)

        rows = [replace(r, seed=window_seed(r.seed, w)) for r in req.rows] if w else req.rows
        prompt = None if codes is None else codes[..., codes.shape[-1] - plan.context :]
        window_req = replace(req, rows=rows, max_frames=plan.new, prompt_codes=prompt, on_step=step_cb)
        new = backend.decode(model, window_req)
        codes = new if codes is None else torch.cat([codes, new.to(codes.device)], dim=-1)
        done = base + call_steps
    assert codes is not None
    return codes
