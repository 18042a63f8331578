"""A min/max peak envelope of a clip, small enough for a sidecar and an inline SVG.

The channels are mixed (mean) first, the mono signal is cut into `bins` equal spans and each
span keeps its lowest and highest sample: a picture of the waveform that survives any zoom a
result page needs, at a few kilobytes per output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 400
DECIMALS = 4  # enough for a picture a few thousand pixels tall; keeps the JSON short


@dataclass(frozen=True)
class Envelope:
    min: list[float]
    max: list[float]

    @property
    def bins(self) -> int:
        return len(self.min)


def peak_envelope(audio: np.ndarray, bins: int = DEFAULT_BINS) -> Envelope:
    """`audio`: [channels, samples] or [samples], float. Returns at most `bins` (min, max) pairs;
    fewer when the clip has fewer samples; none for an empty clip."""
    if bins < 1:
        raise ValueError("bins must be at least 1")
    x = np.asarray(audio, dtype=np.float64)
    mono = x.mean(axis=0) if x.ndim == 2 else x.reshape(-1)
    n = mono.shape[0]
    if n == 0:
        return Envelope([], [])
    bins = min(bins, n)
    edges = np.linspace(0, n, bins + 1).astype(np.int64)
    # reduceat over the span starts: every span is non-empty because bins <= n
    lo = np.minimum.reduceat(mono, edges[:-1])
    hi = np.maximum.reduceat(mono, edges[:-1])
    return rounded(lo, hi)


def rounded(lo: np.ndarray, hi: np.ndarray) -> Envelope:
    """The sidecar's envelope from per-bin minima and maxima (non-finite values made drawable)."""
    lo = np.nan_to_num(lo, nan=0.0, posinf=1.0, neginf=-1.0)
    hi = np.nan_to_num(hi, nan=0.0, posinf=1.0, neginf=-1.0)
    return Envelope(
        min=[round(float(v), DECIMALS) for v in lo],
        max=[round(float(v), DECIMALS) for v in hi],
    )
