"""The decoding interface every backend implements, and the values passed to it.

A backend turns text-encoder inputs into MusicGen audio codes (delay pattern already removed).
The engine owns everything around it (seeds, batching, long form, errors); backends own only the
token loop. This module imports nothing of the decoding package, so every implementation
(`hf.TransformersBackend`, `dgx.DgxBackend`) depends on it and never on each other.

Sampling semantics (shared by every backend, audiocraft's): `greedy` takes the argmax; otherwise
logits / temperature, then top-p when `top_p > 0` (top-k ignored), else top-k when `top_k > 0`,
else the full distribution. Classifier-free guidance: `uncond + cfg_coef * (cond - uncond)`; a
`cfg_coef <= 1` turns guidance off (1.0 is the same thing mathematically, and half the work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RowSampling:
    """How one output row is sampled; `seed` seeds that row's random stream."""

    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    greedy: bool = False
    seed: int = 0

    def without_seed(self) -> tuple[float, int, float, bool]:
        """The part that rows of one transformers `generate` call must share."""
        return (self.temperature, self.top_k, self.top_p, self.greedy)

    @property
    def is_greedy(self) -> bool:
        """Greedy when asked, or when the temperature leaves nothing to sample (audiocraft's convention)."""
        return bool(self.greedy) or self.temperature <= 0.0

    def filters(self) -> tuple[int, float]:
        """(top_k, top_p) as applied: top-p wins when set (audiocraft); 0 means that filter is off."""
        if self.top_p > 0.0:
            return 0, float(self.top_p)
        return max(int(self.top_k), 0), 0.0


@dataclass
class DecodeRequest:
    """One decoding call. B rows; the backend doubles them for classifier-free guidance itself."""

    input_ids: torch.Tensor  # [B, L] text tokens
    attention_mask: torch.Tensor  # [B, L]
    rows: list[RowSampling]  # len B
    cfg_coef: float  # guidance scale; <= 1.0 is off
    max_frames: int  # new audio frames wanted (delay pattern already removed)
    prompt_codes: torch.Tensor | None = None  # [B, K, P] codes to continue from (long form)
    on_step: StepCallback | None = None  # (step, total_steps) after each step; may raise to abort
    extras: dict[str, Any] = field(default_factory=dict)  # backend-specific hints, ignored by others


@runtime_checkable
class DecodeBackend(Protocol):
    name: str

    def decode(self, model: Any, req: DecodeRequest) -> torch.Tensor:
        """Codes [B, K, max_frames] (long), delay pattern removed; the prompt is not included."""
        ...
