"""Reference audio brought to what a model reads: its sample rate and channel count (every family)."""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import resample_poly


def to_rate_and_channels(samples: np.ndarray, rate: int, target_rate: int, channels: int) -> np.ndarray:
    """[C, N] float32 audio resampled to `target_rate` and mixed to `channels` (mean to mono,
    mono duplicated to stereo, more channels folded to the first `channels` by averaging)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.shape[0] != channels:
        if channels == 1:
            x = x.mean(axis=0, keepdims=True)
        elif x.shape[0] == 1:
            x = np.repeat(x, channels, axis=0)
        else:
            x = np.stack([x[c::channels].mean(axis=0) for c in range(channels)])
    if rate != target_rate:
        g = math.gcd(int(rate), int(target_rate))
        x = resample_poly(x, target_rate // g, rate // g, axis=-1).astype(np.float32)
    return np.ascontiguousarray(x)
