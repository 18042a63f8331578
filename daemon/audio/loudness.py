"""Loudness normalization (EBU R128 / ITU-R BS.1770-4) and a true-peak limiter.

`normalize()` measures integrated loudness with pyloudnorm, applies one gain to reach the
target, then runs a look-ahead limiter so the 4x-oversampled (true) peak stays under the
ceiling. Everything is vectorized numpy: a 300 s stereo clip takes a few seconds.

Audio is always `[channels, samples]` float32, the engine's layout.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyloudnorm
from scipy.ndimage import maximum_filter1d, minimum_filter1d
from scipy.signal import firwin, resample_poly

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

MAX_MAKEUP_DB = 12.0
"""Most extra gain `normalize()` adds to win back loudness the limiter took."""

_MAX_LIMIT_PASSES = 6
_GAIN_BLOCK = 8  # samples per step of the limiter's gain curve (0.25 ms at 32 kHz)
_MAX_LOUDNESS_PASSES = 6
_LOUDNESS_TOLERANCE_LU = 0.1
_CHUNK = 1 << 18  # base-rate samples per oversampling chunk: bounds memory on long clips
CHUNK_PAD = 64  # covers the resampling filter's half-length (10 base samples) with room to spare
_BLOCK = 4096  # base-rate samples: the unit in which oversampling is skipped or done
_REACH = 12  # base samples either side that shape one envelope value: filter half-length + 1 + 1


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


def db(x: float) -> float:
    """A magnitude in dB (-inf for 0)."""
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


# resample_poly's own default filter (Kaiser 5.0, 10 zero crossings per side), designed once
_FILTER = firwin(2 * 10 * OVERSAMPLE + 1, 1.0 / OVERSAMPLE, window=("kaiser", 5.0)).astype(np.float32)


# Largest gain of any oversampling phase: |oversampled| <= this * max |nearby samples|.
_OVERSHOOT_BOUND = (
    float(max(np.abs(_FILTER[p::OVERSAMPLE] * OVERSAMPLE).sum() for p in range(OVERSAMPLE))) * 1.001
)


def _oversample(x: np.ndarray) -> np.ndarray:
    return resample_poly(x, OVERSAMPLE, 1, axis=-1, window=_FILTER)


def _chunk_bounds(start: int, stop: int) -> list[tuple[int, int]]:
    return [(s, min(s + _CHUNK, stop)) for s in range(start, stop, _CHUNK)]


def _oversampled_peak_envelope(x: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Per base-rate sample n in [start, stop): the largest |oversampled value| between samples n-1 and n+1.

    Taking both neighbouring intervals means any inter-sample peak is owned by the two
    samples whose gain shapes it. Samples outside [start, stop) are used as context, so a
    slice's envelope equals the same slice of the whole signal's envelope.
    """
    channels, n = x.shape
    stop = n if stop is None else stop
    env = np.empty(stop - start, dtype=np.float32)
    for c_start, c_stop in _chunk_bounds(start, stop):
        lo = max(0, c_start - CHUNK_PAD)
        hi = min(n, c_stop + CHUNK_PAD)
        up = _oversample(x[:, lo:hi])
        np.abs(up, out=up)
        mag = up[0]
        for c in range(1, channels):
            np.maximum(mag, up[c], out=mag)
        # the OVERSAMPLE sub-samples following each base sample: the interval [n, n+1).
        # Elementwise maxima of strided views: numpy's reduce over a short inner axis is 20x slower.
        groups = mag[0::OVERSAMPLE].copy()
        for k in range(1, OVERSAMPLE):
            np.maximum(groups, mag[k::OVERSAMPLE], out=groups)
        both = groups.copy()
        both[1:] = np.maximum(groups[1:], groups[:-1])  # and the interval [n-1, n)
        env[c_start - start : c_stop - start] = both[c_start - lo : c_stop - lo]
    return env


def _peak_bound(x: np.ndarray) -> np.ndarray:
    """A cheap upper bound of the oversampled envelope, per base-rate sample.

    Every oversampled value is a filter-weighted sum of the base samples within _REACH,
    so it cannot exceed the filter's largest per-phase L1 norm times their largest magnitude.
    """
    mag = np.abs(x[0])
    for c in range(1, x.shape[0]):
        np.maximum(mag, np.abs(x[c]), out=mag)
    return maximum_filter1d(mag, size=2 * _REACH + 1, mode="constant") * np.float32(_OVERSHOOT_BOUND)


def envelope(x: np.ndarray, threshold: float) -> np.ndarray:
    """An upper bound of `_oversampled_peak_envelope(x)` that is exact wherever the exact value
    could reach `threshold`.

    Only blocks whose cheap bound reaches the threshold are oversampled: for the limiter
    (threshold just under the ceiling) and the true-peak meter (threshold = sample peak)
    that is usually a small part of the signal.
    """
    bound = _peak_bound(x)
    n = bound.size
    nblocks = -(-n // _BLOCK)
    padded = np.zeros(nblocks * _BLOCK, dtype=np.float32)
    padded[:n] = bound
    hot = padded.reshape(nblocks, _BLOCK).max(axis=1) >= threshold
    edges = np.flatnonzero(np.diff(np.concatenate(([0], hot.astype(np.int8), [0]))))
    env = bound
    for b0, b1 in zip(edges[::2], edges[1::2]):
        lo, hi = int(b0) * _BLOCK, min(n, int(b1) * _BLOCK)
        env[lo:hi] = _oversampled_peak_envelope(x, lo, hi)
    return env


def true_peak_dbtp(audio: np.ndarray, sample_rate: int) -> float:
    """True peak in dBTP: the largest magnitude of the 4x-oversampled signal (BS.1770-4 Annex 2).

    The sample values count too (a resampling filter can round a lone full-scale sample down).
    """
    del sample_rate  # the oversampling factor is fixed; kept for a uniform helper signature
    x = _as_channels_first(np.asarray(audio, dtype=np.float32))
    if x.shape[1] == 0:
        return float("-inf")
    sample_peak = float(np.abs(x).max())
    if sample_peak == 0.0:
        return float("-inf")
    # the true peak is >= the sample peak, so blocks that cannot reach it need no oversampling
    return db(max(sample_peak, float(envelope(x, sample_peak).max())))


def _limiter_gain(env: np.ndarray, ceiling: float, sample_rate: int) -> np.ndarray:
    """A smooth gain curve g with g[n] * env[n] <= ceiling for every n.

    Computed on a grid of _GAIN_BLOCK-sample blocks (the curve moves over a millisecond and
    more, so nothing is lost and it is that many times cheaper), then linearly interpolated:
    1. c[k] = required gain min(1, ceiling / env) over blocks k-1 and k: the two block
       values that sample n in block k is interpolated from both cover its block;
    2. look-ahead: w[k] = min(c[k .. k+L-1]);
    3. release: in dB, w may rise at most RELEASE_DB_PER_S (a running minimum of
       w[j] + rate * (k - j), computed as rate*k + cummin(w[j] - rate*j));
    4. attack: the trailing L-block mean of the released curve.
    Every term of the step-4 mean at k covers a window containing k, so each is <= c[k]:
    the mean is too, and the curve ramps linearly over L blocks (no clicks).
    """
    n = env.size
    block = _GAIN_BLOCK
    nblocks = -(-n // block)
    padded = np.zeros(nblocks * block, dtype=np.float32)
    padded[:n] = env
    peak = padded.reshape(nblocks, block).max(axis=1).astype(np.float64)
    if peak.max(initial=0.0) <= ceiling:
        return np.ones(n, dtype=np.float32)
    required = np.minimum(1.0, ceiling / np.maximum(peak, 1e-12))
    covered = np.minimum(required, np.concatenate(([required[0]], required[:-1])))
    look = max(2, int(math.ceil(LOOKAHEAD_S * sample_rate / block)))
    # forward-looking min over [k, k+look-1]: minimum_filter1d is centred, so shift the origin
    ahead = minimum_filter1d(covered, size=look, origin=-(look // 2), mode="nearest")
    w_db = 20.0 * np.log10(ahead)
    rate = RELEASE_DB_PER_S * block / sample_rate
    idx = np.arange(nblocks, dtype=np.float64)
    released = np.power(10.0, np.minimum(0.0, rate * idx + np.minimum.accumulate(w_db - rate * idx)) / 20.0)
    # trailing mean over [k-look+1, k]; before the clip starts, hold the first value so the
    # opening blocks are covered too (their windows would have reached into the clip)
    csum = np.concatenate(
        (np.zeros(1), np.cumsum(np.concatenate((np.full(look - 1, released[0]), released))))
    )
    smooth = np.minimum((csum[look:] - csum[:-look]) / look, 1.0)
    # sample j of block k: from smooth[k] towards smooth[k+1]
    nxt = np.concatenate((smooth[1:], smooth[-1:]))
    frac = np.arange(block, dtype=np.float32) / block
    start = smooth.astype(np.float32)
    gain = start[:, None] + (nxt.astype(np.float32) - start)[:, None] * frac[None, :]
    return gain.reshape(-1)[:n]


def _refresh_envelope(out: np.ndarray, estimate: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """The exact envelope of `out` = x * gain, given estimate = envelope(x) * gain.

    Where the gain is constant over the resampling filter's reach, scaling commutes with
    oversampling and the estimate is exact; only blocks where the gain moves are
    oversampled again. Sparse limiting (the usual case) then costs a fraction of a pass.
    """
    n = gain.size
    moving = np.zeros(n, dtype=bool)
    moving[1:] = gain[1:] != gain[:-1]
    if not moving.any():
        return estimate
    nblocks = -(-n // _BLOCK)
    padded = np.zeros(nblocks * _BLOCK, dtype=bool)
    padded[:n] = moving
    hot = padded.reshape(nblocks, _BLOCK).any(axis=1)
    # a neighbouring block's values feel the change too (the filter reaches _REACH < _BLOCK samples)
    hot[1:] |= hot[:-1].copy()
    hot[:-1] |= hot[1:].copy()
    env = estimate
    edges = np.flatnonzero(np.diff(np.concatenate(([0], hot.astype(np.int8), [0]))))
    for b0, b1 in zip(edges[::2], edges[1::2]):
        lo, hi = int(b0) * _BLOCK, min(n, int(b1) * _BLOCK)
        env[lo:hi] = _oversampled_peak_envelope(out, lo, hi)
    return env


def limit_true_peak(
    audio: np.ndarray, sample_rate: int, ceiling_dbtp: float, *, envelope: np.ndarray | None = None
) -> tuple[np.ndarray, float, float]:
    """Limit `audio` so its true peak is <= ceiling_dbtp.

    Returns (audio, deepest gain reduction in dB, true peak of the result in dBTP).
    `envelope` may pass `_oversampled_peak_envelope(audio)` when the caller has it.
    The gain is computed from the oversampled envelope but applied at the base rate, which
    can let a sliver of overshoot through where the gain moves; each further pass aims a
    little lower until the measured true peak is under the ceiling.
    """
    x = _as_channels_first(np.asarray(audio, dtype=np.float32))
    ceiling = 10.0 ** (ceiling_dbtp / 20.0)
    env_in = _oversampled_peak_envelope(x) if envelope is None else envelope
    env = env_in
    out = x
    total_gain: np.ndarray | None = None
    margin_db = 0.02
    for _ in range(_MAX_LIMIT_PASSES):
        if _peak(env, out) <= ceiling:
            break
        gain = _limiter_gain(env, ceiling * 10.0 ** (-margin_db / 20.0), sample_rate)
        total_gain = gain if total_gain is None else total_gain * gain
        out = x * total_gain
        env = _refresh_envelope(out, env_in * total_gain, total_gain)
        margin_db = min(margin_db * 2.5, 0.5)
    peak = _peak(env, out)
    if peak > ceiling:
        # A pathological signal (e.g. full-scale alternating samples) can defeat the
        # smooth gain: fall back to one static gain on top, which always succeeds.
        static = np.float32(ceiling / peak * 10.0 ** (-0.01 / 20.0))
        total_gain = np.full(x.shape[1], static) if total_gain is None else total_gain * static
        out = x * total_gain
        peak = 10.0 ** (true_peak_dbtp(out, sample_rate) / 20.0)
    reduction = 0.0 if total_gain is None or total_gain.size == 0 else max(0.0, -db(float(total_gain.min())))
    return (out if out is not x else x.copy()), reduction, db(peak)


def _peak(env: np.ndarray, out: np.ndarray) -> float:
    return max(float(env.max(initial=0.0)), float(np.abs(out).max(initial=0.0)))


@dataclass(frozen=True)
class Pass:
    """One try of a gain: what the limited output measures (and the output, when kept in memory)."""

    gain_db: float
    lufs: float
    peak_db: float
    reduction_db: float
    audio: np.ndarray | None = None


def search_gain(input_lufs: float, target_lufs: float | None, attempt: Callable[[float], Pass]) -> Pass:
    """The gain that brings the limited output to `target_lufs`: the plain difference first; when
    the limiter pulls loudness down, secant steps on measured loudness (at most MAX_MAKEUP_DB
    extra). Returns the try closest to target. `attempt(gain_db)` renders and measures one try."""
    base_gain_db = 0.0 if target_lufs is None else target_lufs - input_lufs
    gain_db = base_gain_db
    best: Pass | None = None
    history: list[tuple[float, float]] = []  # (gain_db, measured lufs)
    for _ in range(_MAX_LOUDNESS_PASSES):
        result = attempt(gain_db)
        if target_lufs is None:
            return result
        # a later pass must be clearly closer: equal loudness with deeper limiting is worse
        if best is None or abs(target_lufs - result.lufs) < abs(target_lufs - best.lufs) - 0.05:
            best = result
        error = target_lufs - result.lufs
        if result.reduction_db == 0.0 or abs(error) <= _LOUDNESS_TOLERANCE_LU:
            break
        history.append((gain_db, result.lufs))
        slope = 1.0
        if len(history) >= 2:
            (g0, l0), (g1, l1) = history[-2], history[-1]
            slope = (l1 - l0) / (g1 - g0) if g1 != g0 else 0.0
            if slope < 0.1:
                break  # more gain only deepens the limiting without getting louder
            slope = min(slope, 1.0)
        next_gain = min(gain_db + error / slope, base_gain_db + MAX_MAKEUP_DB)
        if abs(next_gain - gain_db) < 0.01:
            break
        gain_db = next_gain
    assert best is not None
    return best


def normalize(
    audio: np.ndarray,
    sample_rate: int,
    target_lufs: float | None,
    true_peak_dbtp: float | None,
) -> LoudnessResult:
    """Bring `audio` ([channels, samples] float32) to `target_lufs`, then limit to `true_peak_dbtp`.

    None for either skips that stage. Silence (< -70 LUFS) is returned untouched with
    skipped_reason "silence". When the limiter pulls loudness down, the pre-gain is raised
    (`search_gain`) and the limiter re-run, so the result lands on target where the ceiling
    allows it; otherwise the pass closest to target is returned and its measured loudness reported.
    """
    ceiling_dbtp = true_peak_dbtp
    x = _as_channels_first(np.asarray(audio, dtype=np.float32))
    if not np.isfinite(x).all():
        # a broken generation: measuring it would call it silence and ship it
        raise ValueError("audio contains NaN or infinite samples")
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

    # oversampled once: every pass scales it (exact: oversampling is linear)
    env_in = _oversampled_peak_envelope(x) if ceiling_dbtp is not None else None

    def attempt(gain_db: float) -> Pass:
        scale = np.float32(10.0 ** (gain_db / 20.0))
        out = x * scale if gain_db != 0.0 else x.copy()
        reduction = 0.0
        if ceiling_dbtp is not None:
            assert env_in is not None
            out, reduction, peak_db = limit_true_peak(out, sample_rate, ceiling_dbtp, envelope=env_in * scale)
        else:
            peak_db = _measure_peak(out, sample_rate)
        lufs = integrated_lufs(out, sample_rate) if (gain_db != 0.0 or reduction > 0.0) else input_lufs
        return Pass(gain_db, lufs, peak_db, reduction, out)

    best = search_gain(input_lufs, target_lufs, attempt)
    assert best.audio is not None
    return LoudnessResult(
        audio=best.audio,
        input_lufs=input_lufs,
        integrated_lufs=best.lufs,
        true_peak_dbtp=best.peak_db,
        gain_db=best.gain_db,
        skipped_reason="no_target" if target_lufs is None else None,
        limiter_reduction_db=best.reduction_db,
    )


def _measure_peak(x: np.ndarray, sample_rate: int) -> float:
    return true_peak_dbtp(x, sample_rate)
