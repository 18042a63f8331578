"""Loudness, true peak, the limiter and the waveform envelope over a clip read a block at a time.

The same figures as `daemon.audio.loudness` and `daemon.audio.waveform` on a whole signal, in
memory that does not grow with the clip:

- integrated loudness (BS.1770-4): the K-weighting filters run block by block with their state
  carried, and only the gating blocks' energies (400 ms blocks every 100 ms: 80 bytes a second)
  are kept until the gates are applied at the end; the same blocks and gates as pyloudnorm;
- true peak: each block is oversampled with the resampling filter's context on either side, so
  it is the whole signal's figure exactly;
- the limiter runs on segments with RELEASE_CONTEXT_S of the clip before them and
  FUTURE_CONTEXT_S after (its release forgets a reduction of 40 dB/s x that context; its
  look-ahead is milliseconds): each segment's gain is the whole signal's within a few hundredths
  of a dB, and its output stays under the ceiling;
- `normalize_clip` searches the gain as `loudness.normalize` does, each try one streaming pass
  that measures the limited output without keeping it; `render` then gives the chosen output
  block by block, for the encoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyloudnorm
from scipy.signal import lfilter

from daemon.audio import loudness as whole
from daemon.audio.waveform import DEFAULT_BINS, Envelope, rounded
from daemon.core.pcm import Clip

RELEASE_CONTEXT_S = 2.0
FUTURE_CONTEXT_S = 0.1
BLOCK_SAMPLES = 1 << 18
"""Samples per channel of one segment or read (8 s at 32 kHz)."""

_GATE_S, _GATE_STEP = 0.4, 0.25  # BS.1770: 400 ms blocks, 75 % overlap
_CHANNEL_GAINS = (1.0, 1.0, 1.0, 1.41, 1.41)


class BlockEnergies:
    """The energy of the K-weighted signal (BS.1770's filters, state carried from block to block)
    in each window [lower[j], upper[j]) of a signal fed in order: only a few numbers per window
    are kept, whatever the signal's length."""

    def __init__(self, sample_rate: int, channels: int, lower: np.ndarray, upper: np.ndarray) -> None:
        meter = pyloudnorm.Meter(sample_rate)
        # pyloudnorm's own K-weighting stages: the same coefficients as the whole-signal meters
        self._stages = [(np.asarray(f.b, float), np.asarray(f.a, float)) for f in meter._filters.values()]
        self._state = [[np.zeros(max(len(b), len(a)) - 1) for b, a in self._stages] for _ in range(channels)]
        self.channels = channels
        self._lower, self._upper = lower, upper
        self._bounds = np.unique(np.concatenate((lower, upper)))
        self._sums = np.zeros((channels, self._bounds.size))  # energy before each bound
        self._total = np.zeros(channels)
        self.fed = 0
        self.nonzero = False

    def feed(self, block: np.ndarray) -> None:
        x = np.asarray(block, dtype=np.float64)
        n = x.shape[1]
        self.nonzero = self.nonzero or bool(np.any(x))
        lo, hi = np.searchsorted(self._bounds, [self.fed, self.fed + n], side="right")
        for c in range(self.channels):
            y = x[c]
            for k, (b, a) in enumerate(self._stages):
                y, self._state[c][k] = lfilter(b, a, y, zi=self._state[c][k])
            cum = np.cumsum(np.square(y))
            self._sums[c, lo:hi] = self._total[c] + cum[self._bounds[lo:hi] - self.fed - 1]
            self._total[c] += cum[-1] if n else 0.0
        self.fed += n

    def energies(self) -> np.ndarray:
        """[channels, windows]: each window's energy (a window reaching past the end: up to the end)."""
        sums = self._sums.copy()
        sums[:, self._bounds > self.fed] = self._total[:, None]
        at = np.searchsorted(self._bounds, self._lower), np.searchsorted(self._bounds, self._upper)
        return sums[:, at[1]] - sums[:, at[0]]


class LoudnessMeter:
    """Integrated loudness of `samples` samples fed in order, in blocks of any size."""

    def __init__(self, sample_rate: int, channels: int, samples: int) -> None:
        seconds = samples / sample_rate
        count = max(0, int(np.round((seconds - _GATE_S) / (_GATE_S * _GATE_STEP))) + 1)
        j = np.arange(count)
        # pyloudnorm's block bounds, computed by the same float expressions
        lower = (_GATE_S * (j * _GATE_STEP) * sample_rate).astype(np.int64)
        upper = (_GATE_S * (j * _GATE_STEP + 1) * sample_rate).astype(np.int64)
        self._blocks = BlockEnergies(sample_rate, channels, lower, upper)
        self.rate, self.channels = sample_rate, channels

    def feed(self, block: np.ndarray) -> None:
        self._blocks.feed(block)

    def lufs(self) -> float:
        """The gated loudness (LUFS) of what was fed; -inf for digital silence."""
        z = self._blocks.energies() / (_GATE_S * self.rate)
        if not self._blocks.nonzero or z.shape[1] == 0:
            return float("-inf")
        gains = np.asarray(_CHANNEL_GAINS[: self.channels])[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            block_lufs = -0.691 + 10.0 * np.log10((gains * z).sum(axis=0))
            above = block_lufs >= -70.0
            if not above.any():
                return float("-inf")
            relative = -0.691 + 10.0 * np.log10((gains[:, 0] * z[:, above].mean(axis=1)).sum()) - 10.0
            gated = (block_lufs > relative) & (block_lufs > -70.0)
            if not gated.any():
                return float("-inf")
            value = -0.691 + 10.0 * np.log10((gains[:, 0] * z[:, gated].mean(axis=1)).sum())
        return float(value) if math.isfinite(value) else float("-inf")


class TruePeakMeter:
    """The true peak (4x oversampled, BS.1770-4 Annex 2) of a signal fed in order, in blocks."""

    _PAD = whole.CHUNK_PAD  # the resampling filter's reach, with room to spare

    def __init__(self, channels: int) -> None:
        self._buf = np.zeros((channels, 0), dtype=np.float32)
        self._measured = 0  # leading samples of _buf already measured (kept as left context)
        self.peak = 0.0

    def feed(self, block: np.ndarray) -> None:
        self._buf = np.concatenate((self._buf, np.asarray(block, dtype=np.float32)), axis=1)
        self._measure(self._buf.shape[1] - self._PAD)

    def finish(self) -> float:
        """The true peak in dBTP (-inf for digital silence)."""
        self._measure(self._buf.shape[1])
        return whole.db(self.peak)

    def _measure(self, stop: int) -> None:
        start = self._measured
        if stop <= start:
            return
        x = self._buf
        sample_peak = float(np.abs(x[:, start:stop]).max())
        if sample_peak > 0.0:
            env = whole.envelope(x, sample_peak)[start:stop]
            self.peak = max(self.peak, sample_peak, float(env.max()))
        keep = min(stop, self._PAD)
        self._buf = x[:, stop - keep :]
        self._measured = keep


class EnvelopeBuilder:
    """`waveform.peak_envelope` of a signal of `samples` samples fed in order, in blocks."""

    def __init__(self, samples: int, bins: int = DEFAULT_BINS) -> None:
        if bins < 1:
            raise ValueError("bins must be at least 1")
        bins = min(bins, samples)
        self._edges = np.linspace(0, samples, bins + 1).astype(np.int64)
        self._lo = np.full(bins, np.inf)
        self._hi = np.full(bins, -np.inf)
        self._fed = 0

    def feed(self, block: np.ndarray) -> None:
        x = np.asarray(block, dtype=np.float64)
        mono = x.mean(axis=0) if x.ndim == 2 else x.reshape(-1)
        start, stop = self._fed, self._fed + mono.shape[0]
        self._fed = stop
        if self._lo.size == 0 or stop == start:
            return
        # the bins this block touches, each cut to the block
        first = int(np.searchsorted(self._edges, start, side="right")) - 1
        last = int(np.searchsorted(self._edges, stop - 1, side="right")) - 1
        cuts = np.maximum(self._edges[first : last + 1], start) - start
        lo = np.minimum.reduceat(mono, cuts)
        hi = np.maximum.reduceat(mono, cuts)
        np.minimum(self._lo[first : last + 1], lo, out=self._lo[first : last + 1])
        np.maximum(self._hi[first : last + 1], hi, out=self._hi[first : last + 1])

    def envelope(self) -> Envelope:
        return rounded(self._lo, self._hi)


def measure_clip(clip: Clip, sample_rate: int, block: int = BLOCK_SAMPLES) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of `clip`, read block by block, in order.

    Raises ValueError on NaN or infinite samples (a broken generation must not be called silence)."""
    if clip.samples < math.ceil(whole.MIN_MEASURE_S * sample_rate):
        x = clip.read()
        if not np.isfinite(x).all():
            raise ValueError("audio contains NaN or infinite samples")
        return whole.integrated_lufs(x, sample_rate), whole.true_peak_dbtp(x, sample_rate)
    loud = LoudnessMeter(sample_rate, clip.channels, clip.samples)
    peak = TruePeakMeter(clip.channels)
    for start in range(0, clip.samples, block):
        x = clip.read(start, start + block)
        if not np.isfinite(x).all():
            raise ValueError("audio contains NaN or infinite samples")
        loud.feed(x)
        peak.feed(x)
    return loud.lufs(), peak.finish()


def render(
    clip: Clip, sample_rate: int, gain_db: float, ceiling_dbtp: float | None, block: int = BLOCK_SAMPLES
) -> Iterator[tuple[np.ndarray, float]]:
    """`clip` times the gain, limited to the ceiling (None: not limited): (block [channels, n],
    the deepest gain reduction in it in dB), in order."""
    scale = np.float32(10.0 ** (gain_db / 20.0))
    before = math.ceil(RELEASE_CONTEXT_S * sample_rate)
    after = math.ceil(FUTURE_CONTEXT_S * sample_rate)
    n = clip.samples
    for start in range(0, n, block):
        stop = min(n, start + block)
        if ceiling_dbtp is None:
            yield clip.read(start, stop) * scale, 0.0
            continue
        lo, hi = max(0, start - before), min(n, stop + after)
        out, reduction, _ = whole.limit_true_peak(clip.read(lo, hi) * scale, sample_rate, ceiling_dbtp)
        yield out[:, start - lo : stop - lo], reduction


@dataclass(frozen=True)
class Plan:
    """What `normalize_clip` chose: `render(clip, rate, gain_db, ceiling_dbtp)` writes it."""

    input_lufs: float
    integrated_lufs: float
    true_peak_dbtp: float
    gain_db: float
    ceiling_dbtp: float | None
    skipped_reason: str | None = None
    limiter_reduction_db: float = 0.0


def normalize_clip(
    clip: Clip,
    sample_rate: int,
    target_lufs: float | None,
    true_peak_dbtp: float | None,
    block: int = BLOCK_SAMPLES,
) -> Plan:
    """`loudness.normalize` for a clip read block by block: the gain and ceiling to render it with,
    and the loudness and true peak the rendered clip has."""
    input_lufs, input_peak = measure_clip(clip, sample_rate, block)
    if input_lufs < whole.SILENCE_LUFS:
        return Plan(input_lufs, input_lufs, input_peak, 0.0, None, skipped_reason="silence")

    def attempt(gain_db: float) -> whole.Pass:
        loud = LoudnessMeter(sample_rate, clip.channels, clip.samples)
        peak = TruePeakMeter(clip.channels)
        reduction = 0.0
        for out, red in render(clip, sample_rate, gain_db, true_peak_dbtp, block):
            loud.feed(out)
            peak.feed(out)
            reduction = max(reduction, red)
        return whole.Pass(gain_db, loud.lufs(), peak.finish(), reduction)

    if true_peak_dbtp is None:
        gain = 0.0 if target_lufs is None else target_lufs - input_lufs
        best = attempt(gain) if gain else whole.Pass(0.0, input_lufs, input_peak, 0.0)
    else:
        best = whole.search_gain(input_lufs, target_lufs, attempt)
    return Plan(
        input_lufs=input_lufs,
        integrated_lufs=best.lufs,
        true_peak_dbtp=best.peak_db,
        gain_db=best.gain_db,
        ceiling_dbtp=true_peak_dbtp,
        skipped_reason="no_target" if target_lufs is None else None,
        limiter_reduction_db=best.reduction_db,
    )
