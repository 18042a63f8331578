"""Whether the dgx decode loop runs on the installed transformers, checked on the loaded model.

The loop drives transformers' MusicGen layers directly, so a transformers release that changes
their calling convention can break it while `generate` still works. `decoder: auto` therefore
checks the loop once per load with a two-frame greedy decode against `generate` (same model, same
text) and falls back to `generate` when it fails, rather than letting the daemon fail its warm-up.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from daemon.engine.decoding.api import DecodeBackend, DecodeRequest, RowSampling

log = logging.getLogger(__name__)

PROBE_FRAMES = 2


def dgx_problem(backend: DecodeBackend, reference: DecodeBackend, model: Any, processor: Any) -> str | None:
    """Why `backend` cannot be used on `model` (None when it can).

    It must decode without error and give codes of the right shape; in float32 it must also give
    `reference`'s tokens (in half precision different kernels may legitimately flip an argmax).
    """
    enc = processor(text=["a short probe"], padding=True, return_tensors="pt")
    device = next(model.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    req = DecodeRequest(ids, mask, [RowSampling(greedy=True)], cfg_coef=1.0, max_frames=PROBE_FRAMES)
    try:
        with torch.inference_mode():
            ours = backend.decode(model, req)
    except Exception as exc:  # any failure of the loop means "use generate", whatever its type
        return f"{type(exc).__name__}: {exc}"
    finally:
        getattr(backend, "reset", lambda: None)()  # the probe's shape is not one jobs use: drop its buffers
    expected = (1, int(model.config.decoder.num_codebooks), PROBE_FRAMES)
    if tuple(ours.shape) != expected:
        return f"it returned codes of shape {tuple(ours.shape)}, expected {expected}"
    if next(model.decoder.parameters()).dtype != torch.float32:
        return None
    try:
        with torch.inference_mode():
            theirs = reference.decode(model, req)
    except Exception as exc:
        log.warning("the transformers decoder failed its check (%s): keeping the dgx loop", exc)
        return None
    same = torch.equal(ours.cpu(), theirs.cpu())
    return None if same else "its greedy tokens differ from transformers generate on this model"
