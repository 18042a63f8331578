"""Loudness normalization (EBU R128 / ITU-R BS.1770-4) and a true-peak limiter.

`normalize()` measures integrated loudness with pyloudnorm, applies one gain to reach the
target, then runs a look-ahead limiter so the 4x-oversampled (true) peak stays under the
ceiling. Everything is vectorized numpy: a 300 s stereo clip takes a few seconds.

Audio is always `[channels, samples]` float32, the engine's layout.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyloudnorm
from scipy.ndimage import minimum_filter1d
from scipy.signal import resample_poly

SILENCE_LUFS = -70.0
"""Below this (BS.1770's absolute gate) a clip counts as silence and is left untouched."""

OVERSAMPLE = 4
"""BS.1770-4 Annex 2 true-peak meters oversample 4x at 48 kHz; MusicGen's 32 kHz is covered too."""

MIN_MEASURE_S = 1.0
"""pyloudnorm needs at least one 400 ms gating block; shorter clips are measured on a tiled copy."""

LOOKAHEAD_S = 0.0015
"""Limiter attack (= look-ahead): gain reaches its floor by the time the peak arrives."""

RELEASE_DB_PER_S = 40.0
"""Limiter release: gain recovers at this rate (dB/s), slow enough not to modulate bass."""

MAX_MAKEUP_DB = 6.0
"""Most extra gain `normalize()` adds to win back loudness the limiter took."""

_MAX_LIMIT_PASSES = 6
_MAX_LOUDNESS_PASSES = 4
_LOUDNESS_TOLERANCE_LU = 0.1
_CHUNK = 1 << 18  # base-rate samples per oversampling chunk: bounds memory on long clips
_CHUNK_PAD = 64  # covers the resampling filter's half-length (10 base samples) with room to spare


@dataclass(frozen=True)
class LoudnessResult:
    """What `normalize()` did. Loudness and peak are measured on the returned audio."""

    audio: np.ndarray
    input_lufs: float
    integrated_lufs: float
    true_peak_dbtp: float
    gain_db: float
    skipped_reason: str | None = None
    limiter_reduction_db: float = 0.0
    """Deepest gain reduction the limiter applied (0.0 when it never engaged)."""


def _as_channels_first(audio: np.ndarray) -> np.ndarray:
    if audio.ndim == 1:
        return audio[np.newaxis, :]
    if audio.ndim != 2:
        raise ValueError(f"audio must be [channels, samples], got shape {audio.shape}")
    if audio.shape[0] > 5:
        raise ValueError(
            f"audio has {audio.shape[0]} channels: BS.1770 loudness is defined for up to 5 "
            "(is the array [samples, channels] instead of [channels, samples]?)"
        )
    return audio


def _db(x: float) -> float:
    return 20.0 * math.log10(x) if x > 0 else float("-inf")


def integrated_lufs(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness (LUFS, BS.1770-4 gated); -inf for digital silence.

    Clips shorter than MIN_MEASURE_S are tiled to that length first: for a short steady
    sound that gives its loudness rather than an error.
    """
    x = _as_channels_first(np.asarray(audio)).astype(np.float64)
    n = x.shape[1]
    if n == 0:
        return float("-inf")
    need = int(math.ceil(MIN_MEASURE_S * sample_rate))
    if n < need:
        x = np.tile(x, (1, int(math.ceil(need / n))))
    if not np.any(x):
        return float("-inf")
    meter = pyloudnorm.Meter(sample_rate)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(meter.integrated_loudness(x.T))
    return value if math.isfinite(value) else float("-inf")


def _chunk_bounds(n: int) -> list[tuple[int, int]]:
    return [(s, min(s + _CHUNK, n)) for s in range(0, n, _CHUNK)]


def _oversampled_peak_envelope(x: np.ndarray) -> np.ndarray:
    """Per base-rate sample n: the largest |oversampled value| between samples n-1 and n+1.

    Taking both neighbouring intervals means any inter-sample peak is owned by the two
    samples whose gain shapes it.
    """
    channels, n = x.shape
    env = np.empty(n, dtype=np.float32)
    for start, stop in _chunk_bounds(n):
        lo = max(0, start - _CHUNK_PAD)
        hi = min(n, stop + _CHUNK_PAD)
        up = resample_poly(x[:, lo:hi], OVERSAMPLE, 1, axis=1)
        mag = np.abs(up).max(axis=0)
        # group the OVERSAMPLE sub-samples following each base sample: [n, n+1)
        m = mag.size // OVERSAMPLE
        groups = mag[: m * OVERSAMPLE].reshape(m, OVERSAMPLE).max(axis=1)
        prev = np.concatenate(([groups[0]], groups[:-1]))  # interval [n-1, n)
        both = np.maximum(groups, prev)
        env[start:stop] = both[start - lo : start - lo + (stop - start)]
    return env


def true_peak_dbtp(audio: np.ndarray, sample_rate: int) -> float:
    """True peak in dBTP: the largest magnitude of the 4x-oversampled signal (BS.1770-4 Annex 2)."""
    x = _as_channels_first(np.asarray(audio, dtype=np.float32))
    if x.shape[1] == 0:
        return float("-inf")
    peak = 0.0
    for start, stop in _chunk_bounds(x.shape[1]):
        lo = max(0, start - _CHUNK_PAD)
        hi = min(x.shape[1], stop + _CHUNK_PAD)
        up = resample_poly(x[:, lo:hi], OVERSAMPLE, 1, axis=1)
        peak = max(peak, float(np.abs(up).max()))
        # the sample values themselves count too (resampling filters can round them down)
        peak = max(peak, float(np.abs(x[:, start:stop]).max()))
    del sample_rate  # the oversampling factor is fixed; kept for a uniform helper signature
    return _db(peak)


def _limiter_gain(env: np.ndarray, ceiling: float, sample_rate: int) -> np.ndarray:
    """A smooth gain curve g with g[n] * env[n] <= ceiling for every n.

    1. required gain r[n] = min(1, ceiling / env[n]);
    2. look-ahead: w[n] = min(r[n .. n+L-1]);
    3. release: in dB, w may rise at most RELEASE_DB_PER_S (a running minimum of
       w[k] + rate * (n - k), computed as rate*n + cummin(w[k] - rate*k));
    4. attack: the trailing L-sample mean of the released curve.
    Every term of the step-4 mean at n covers a window containing n, so each is <= r[n]:
    the mean is too, and the curve ramps linearly over L samples (no clicks).
    """
    n = env.size
    look = max(2, int(round(LOOKAHEAD_S * sample_rate)))
    with np.errstate(divide="ignore"):
        required = np.minimum(1.0, ceiling / np.maximum(env.astype(np.float64), 1e-12))
    if required.min() >= 1.0:
        return np.ones(n, dtype=np.float32)
    # forward-looking min over [n, n+look-1]: minimum_filter1d is centred, so shift the origin
    ahead = minimum_filter1d(required, size=look, origin=-(look // 2), mode="nearest")
    w_db = 20.0 * np.log10(ahead)
    rate = RELEASE_DB_PER_S / sample_rate
    idx = np.arange(n, dtype=np.float64)
    released_db = np.minimum(0.0, rate * idx + np.minimum.accumulate(w_db - rate * idx))
    released = np.power(10.0, released_db / 20.0)
    # trailing mean over [n-look+1, n]; before the clip starts, hold the first value so the
    # opening samples are covered too (their windows would have reached into the clip)
    padded = np.concatenate((np.full(look - 1, released[0]), released))
    csum = np.concatenate((np.zeros(1), np.cumsum(padded)))
    smooth = (csum[look:] - csum[:-look]) / look
    return np.minimum(smooth, 1.0).astype(np.float32)


def limit_true_peak(
    audio: np.ndarray, sample_rate: int, ceiling_dbtp: float
) -> tuple[np.ndarray, float, float]:
    """Limit `audio` so its true peak is <= ceiling_dbtp.

    Returns (audio, deepest gain reduction in dB, true peak of the result in dBTP).
    The gain is computed from the oversampled envelope but applied at the base rate, which
    can let a sliver of overshoot through where the gain moves; each further pass aims a
    little lower until the measured true peak is under the ceiling.
    """
    x = _as_channels_first(np.asarray(audio, dtype=np.float32))
    ceiling = 10.0 ** (ceiling_dbtp / 20.0)
    out = x
    total_gain = np.ones(x.shape[1], dtype=np.float32)
    margin_db = 0.02
    peak = 0.0
    for _ in range(_MAX_LIMIT_PASSES):
        env = _oversampled_peak_envelope(out)
        peak = max(float(env.max(initial=0.0)), float(np.abs(out).max(initial=0.0)))
        if peak <= ceiling:
            break
        gain = _limiter_gain(env, ceiling * 10.0 ** (-margin_db / 20.0), sample_rate)
        total_gain *= gain
        out = (x * total_gain).astype(np.float32)
        margin_db *= 2.5
    if peak > ceiling:
        # A pathological signal (e.g. full-scale alternating samples) can defeat the
        # smooth gain: fall back to one static gain on top, which always succeeds.
        static = ceiling / peak * 10.0 ** (-0.01 / 20.0)
        total_gain *= np.float32(static)
        out = (x * total_gain).astype(np.float32)
        peak = 10.0 ** (true_peak_dbtp(out, sample_rate) / 20.0)
    reduction = -_db(float(total_gain.min())) if total_gain.size else 0.0
    return out, max(0.0, reduction), _db(peak)


def normalize(
    audio: np.ndarray,
    sample_rate: int,
    target_lufs: float | None,
    true_peak_dbtp: float | None,
) -> LoudnessResult:
    """Bring `audio` ([channels, samples] float32) to `target_lufs`, then limit to `true_peak_dbtp`.

    None for either skips that stage. Silence (< -70 LUFS) is returned untouched with
    skipped_reason "silence". When the limiter pulls loudness down, the pre-gain is raised
    and the limiter re-run (a few passes, at most MAX_MAKEUP_DB extra) so the result lands
    on target where the ceiling allows it; otherwise the pass closest to target is returned
    and its measured loudness reported.
    """
    ceiling_dbtp = true_peak_dbtp
    x = _as_channels_first(np.asarray(audio, dtype=np.float32))
    input_lufs = integrated_lufs(x, sample_rate)

    if input_lufs < SILENCE_LUFS:
        return LoudnessResult(
            audio=x.copy(),
            input_lufs=input_lufs,
            integrated_lufs=input_lufs,
            true_peak_dbtp=_measure_peak(x, sample_rate),
            gain_db=0.0,
            skipped_reason="silence",
        )

    skipped = "no_target" if target_lufs is None else None
    base_gain_db = 0.0 if target_lufs is None else target_lufs - input_lufs
    gain_db = base_gain_db
    best: LoudnessResult | None = None
    for _ in range(_MAX_LOUDNESS_PASSES):
        out = x * np.float32(10.0 ** (gain_db / 20.0)) if gain_db != 0.0 else x.copy()
        reduction = 0.0
        if ceiling_dbtp is not None:
            out, reduction, peak_db = limit_true_peak(out, sample_rate, ceiling_dbtp)
        else:
            peak_db = _measure_peak(out, sample_rate)
        lufs = integrated_lufs(out, sample_rate) if (gain_db != 0.0 or reduction > 0.0) else input_lufs
        result = LoudnessResult(
            audio=out.astype(np.float32, copy=False),
            input_lufs=input_lufs,
            integrated_lufs=lufs,
            true_peak_dbtp=peak_db,
            gain_db=gain_db,
            skipped_reason=skipped,
            limiter_reduction_db=reduction,
        )
        if target_lufs is None:
            return result
        if best is not None and abs(target_lufs - lufs) >= abs(target_lufs - best.integrated_lufs) - 0.05:
            break  # more make-up gain only deepens the limiting without getting louder
        best = result
        shortfall = target_lufs - lufs
        if reduction == 0.0 or shortfall <= _LOUDNESS_TOLERANCE_LU:
            break
        gain_db = min(gain_db + shortfall, base_gain_db + MAX_MAKEUP_DB)
        if gain_db == best.gain_db:
            break
    assert best is not None
    return best


def _measure_peak(x: np.ndarray, sample_rate: int) -> float:
    return true_peak_dbtp(x, sample_rate)
