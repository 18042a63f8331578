"""What a job will take in memory, estimated before it runs, against the `max_memory_gb` budget.

estimate = the model resident (its weight files' size: exact for weights stored in the run dtype,
an upper bound for float32 files run in bfloat16) + count x one variation's working set (by
family and duration) + what a job holds once, whatever its count (the codec's window, the audio
stage's blocks: a job's audio is on disk, `daemon.core.pcm`).

A variation's working set, read from the checkpoint's config (the largest shapes are assumed when
it is not on disk yet):
- MusicGen: the decoder's key/value cache over the frames one window holds (a longer piece goes
  on window by window), twice for classifier-free guidance;
- ACE-Step: the DiT's activations over the song's latent frames (25 per second), a few tensors of
  [frames, hidden] at a time, twice for guidance.

Read without loading anything, so admission (and `dgx-music validate`) can refuse a job whose
estimate exceeds the budget before it gets the daemon killed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.core.config import Settings
from daemon.core.families import ACE_STEP, checkpoint_directory, job_refusal, spec_family

GIB = 1 << 30
JOB_FIXED_BYTES = 768 << 20
"""Held once per job: the codec's window (5 s + context), the audio stage's blocks, the analysis."""

MUSICGEN_FRAME_RATE = 50.0
ACE_STEP_LATENT_RATE = 25.0
ACE_STEP_ACTIVATIONS = 24  # [frames, hidden] tensors alive at once in one DiT layer (attention + MLP)
# The largest public shapes: what is assumed of a checkpoint whose config is not on disk yet.
_MUSICGEN_DEFAULT = {"num_hidden_layers": 48, "hidden_size": 2048}
_ACE_STEP_DEFAULT_HIDDEN = 2560
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class Estimate:
    resident_bytes: int
    variation_bytes: int
    count: int
    fixed_bytes: int = JOB_FIXED_BYTES

    @property
    def total_bytes(self) -> int:
        return self.resident_bytes + self.count * self.variation_bytes + self.fixed_bytes


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _weights_bytes(directory: Path | None) -> int:
    if directory is None or not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file())


def _run_dtype_bytes(settings: Settings) -> int:
    if settings.dtype == "float32" or (settings.dtype == "auto" and settings.device == "cpu"):
        return 4
    return 2


def estimate(settings: Settings, model: str, duration: float, count: int) -> Estimate | None:
    """The estimate for `count` variations of `duration` seconds on configured model `model`
    (None: no such model)."""
    spec = settings.models.get(model)
    if spec is None:
        return None
    directory = checkpoint_directory(spec)
    width = _run_dtype_bytes(settings)
    if spec_family(spec) == ACE_STEP:
        config = _json(directory / "transformer" / "config.json") if directory is not None else None
        hidden = int((config or {}).get("hidden_size", _ACE_STEP_DEFAULT_HIDDEN))
        frames = math.ceil(duration * ACE_STEP_LATENT_RATE)
        variation = 2 * ACE_STEP_ACTIVATIONS * frames * hidden * width
    else:
        config = _json(directory / "config.json") if directory is not None else None
        decoder = {**_MUSICGEN_DEFAULT, **((config or {}).get("decoder") or {})}
        frames = math.ceil(min(duration, settings.window_s) * MUSICGEN_FRAME_RATE)
        per_frame = (
            2 * int(decoder["num_hidden_layers"]) * int(decoder["hidden_size"]) * width
        )  # keys, values
        variation = 2 * frames * per_frame
    return Estimate(_weights_bytes(directory), variation, count)


def memory_refusal(settings: Settings, model: str, duration: float, count: int) -> tuple[str, str] | None:
    """(message, hint) when the job's estimate exceeds `max_memory_gb`; None when it fits."""
    est = estimate(settings, model, duration, count)
    budget = settings.max_memory_gb * GIB
    if est is None or est.total_bytes <= budget:
        return None
    room = budget - est.resident_bytes - est.fixed_bytes
    fits = max(0, int(room // est.variation_bytes)) if est.variation_bytes else count
    lower = f"lower count to {fits}" if fits >= 1 else "shorten the clip"
    return (
        f"this job needs about {est.total_bytes / GIB:.1f} GB (model {est.resident_bytes / GIB:.1f} GB + "
        f"{count} x {est.variation_bytes / GIB:.2f} GB per variation of {duration:g} s), "
        f"more than max_memory_gb ({settings.max_memory_gb:g} GB)",
        f"{lower} (or shorten the clip), or raise max_memory_gb in the config if the machine has the memory",
    )


def admission_refusal(
    keys: set[str], duration: float, count: int, model: str, settings: Settings
) -> tuple[str, str] | None:
    """Everything admission refuses of a job before it runs, by its model: a key the model's family
    cannot honour, a duration it cannot make (`families.job_refusal`), an estimate over the budget."""
    return job_refusal(keys, duration, model, settings) or memory_refusal(settings, model, duration, count)
