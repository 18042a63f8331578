"""Melody conditioning for musicgen-melody checkpoints: the chroma of a reference, computed here.

transformers' MusicgenMelodyFeatureExtractor needs torchaudio for its spectrogram; the same
features come from torch.stft: a power spectrogram (Hann window of n_fft, centred, hop_length),
librosa's chroma filter bank (transformers.audio_utils), normalised per frame by its maximum and
reduced to a one-hot of the strongest pitch class, over `chunk_length` seconds (padded with
silence or cut). The parameters are read from the checkpoint's preprocessor_config.json, as the
hub's facebook/musicgen-melody ships it, so hub and made-up checkpoints are read the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from daemon.engine.resample import to_rate_and_channels

__all__ = ["ChromaExtractor", "ChromaParams", "to_rate_and_channels"]


@dataclass(frozen=True)
class ChromaParams:
    sampling_rate: int = 32000
    n_fft: int = 16384
    hop_length: int = 4096
    chunk_length: int = 30
    num_chroma: int = 12

    @classmethod
    def from_dir(cls, directory: Path) -> ChromaParams:
        path = directory / "preprocessor_config.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        keys = ("sampling_rate", "n_fft", "hop_length", "chunk_length", "num_chroma")
        known = {k: raw[k] for k in keys if k in raw}
        return cls(**{k: int(v) for k, v in known.items()})

    def preprocessor_config(self) -> dict[str, Any]:
        """What a hub musicgen-melody checkpoint ships as preprocessor_config.json."""
        return {
            "feature_extractor_type": "MusicgenMelodyFeatureExtractor",
            "feature_size": self.num_chroma,
            "sampling_rate": self.sampling_rate,
            "hop_length": self.hop_length,
            "chunk_length": self.chunk_length,
            "n_fft": self.n_fft,
            "num_chroma": self.num_chroma,
            "padding_side": "right",
            "padding_value": 0.0,
            "return_attention_mask": False,
            "stem_indices": [3, 2],
            "processor_class": "MusicgenMelodyProcessor",
        }


class ChromaExtractor:
    """One-hot chroma [B, frames, num_chroma] of mono audio at the checkpoint's rate."""

    def __init__(self, params: ChromaParams) -> None:
        from transformers.audio_utils import chroma_filter_bank

        self.params = params
        self.filters = torch.from_numpy(
            chroma_filter_bank(
                sampling_rate=params.sampling_rate,
                num_frequency_bins=params.n_fft,
                tuning=0,
                num_chroma=params.num_chroma,
            )
        ).float()
        self.window = torch.hann_window(params.n_fft)

    def __call__(self, samples: np.ndarray, rate: int) -> torch.Tensor:
        p = self.params
        mono = to_rate_and_channels(samples, rate, p.sampling_rate, 1)[0]
        n = p.chunk_length * p.sampling_rate
        x = torch.from_numpy(mono[:n])
        x = torch.nn.functional.pad(x, (0, max(0, n - x.shape[-1])))[None]
        spec = (
            torch.stft(
                x, p.n_fft, p.hop_length, p.n_fft, window=self.window, center=True, return_complex=True
            ).abs()
            ** 2
        )
        raw = torch.einsum("cf,...ft->...ct", self.filters, spec)
        norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=-2, eps=1e-6).transpose(1, 2)
        one_hot = torch.zeros_like(norm)
        one_hot.scatter_(-1, norm.argmax(-1, keepdim=True), 1.0)
        return one_hot


class TextProcessor:
    """The text half of MusicgenMelodyProcessor, called as
    `processor(text=[...], padding=True, return_tensors="pt")`."""

    def __init__(self, tokenizer: Any, chroma: ChromaExtractor) -> None:
        self.tokenizer = tokenizer
        self.chroma = chroma

    def __call__(self, *, text: list[str], padding: bool = True, return_tensors: str = "pt") -> Any:
        return self.tokenizer(text, padding=padding, return_tensors=return_tensors)
