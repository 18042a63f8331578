"""A seamless loop of whole bars at an exact tempo, cut from generated audio.

1. The audio is analysed (daemon.audio.analysis): its tempo, folded to the octave of the asked
   one, says how many source samples N bars span; the cut starts at a detected downbeat (a beat,
   or the first bar's worth of audio, when none fits), the one where the music N bars later
   sounds most like its start (log spectra of 2048 samples compared), so it repeats naturally.
2. The span is time-stretched to exactly N bars at the asked tempo, then cut to the exact sample
   count: by Rubber Band (its `rubberband` CLI, R3 engine) where installed, else by librosa's
   phase vocoder. Measured (benchmarks/loop_stretch.py, drums 117 -> 120 BPM): both land on the
   tempo (119.99 and 120.04 BPM) and keep the key, Rubber Band keeps 95 % of the attacks' onset
   strength against the phase vocoder's 50 %, at about the same CPU time.
3. The wrap: the loop's last CROSSFADE_S fade into the audio that led into its first sample, so
   the sample after the last is the one the music had there.

The seam is then measured on the loop itself, against limits taken from the loop's own inside:
the jump between its last and first sample (per channel) against the 99th percentile of its
sample-to-sample steps, and the spectral change across the wrap (mean absolute difference of
the log spectra of the 1024 samples before and after it) against the larger of the 99th
percentile of the same change at every 512-sample step inside the loop and 1.25 times the change
the music itself had at the cut (a downbeat's attack). A seam within both is `seamless`. The cut
sits at the quietest sample up to 8 ms before the downbeat, so the attack stays whole.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.audio.analysis import analyze
from jobspec.music import loop_seconds

CROSSFADE_S = 0.02
SEAM_PERCENTILE = 99.0
SEAM_MARGIN = 1.25
# The cut moves to the quietest sample this close before the downbeat (its attack stays whole).
CUT_BEFORE_S = 0.008
_SPEC = 1024
_HOP = 512


@dataclass(frozen=True)
class Seam:
    jump: float  # largest |last - first| sample over the channels
    jump_limit: float
    change: float  # spectral change across the wrap
    change_limit: float

    @property
    def seamless(self) -> bool:
        return self.jump <= self.jump_limit and self.change <= self.change_limit

    @property
    def score(self) -> float:
        """The worse of the two ratios to their limits: <= 1 is seamless."""
        return max(self.jump / max(self.jump_limit, 1e-9), self.change / max(self.change_limit, 1e-9))


@dataclass(frozen=True)
class Looped:
    audio: np.ndarray  # [channels, exact samples]
    start_s: float  # where in the source the loop starts
    source_s: float  # how long a span of the source it is
    stretch: float  # source seconds per loop second (> 1: sped up)
    stretcher: str  # "rubberband" or "librosa"
    measured_bpm: float | None  # the source's tempo (None: no periodicity found; cut at the asked one)
    key: str | None  # the source's measured key (the stretch keeps the pitch)
    seam: Seam


def _logspec(x: np.ndarray) -> np.ndarray:
    mono = x.mean(axis=0) if x.ndim == 2 else x
    return np.log(np.abs(np.fft.rfft(mono * np.hanning(len(mono)))) + 1e-6)


def _change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(_logspec(a) - _logspec(b))))


def seam_of(loop: np.ndarray, natural_change: float = 0.0) -> Seam:
    """The seam of a loop ([channels, samples]) and its limits from the loop's own inside;
    `natural_change`: the spectral change the music itself had where the loop was cut (a downbeat's
    attack), which the spectral limit admits with SEAM_MARGIN."""
    x = loop if loop.ndim == 2 else loop[None]
    steps = np.abs(np.diff(x, axis=1))
    jump = float(np.max(np.abs(x[:, -1] - x[:, 0])))
    jump_limit = float(np.percentile(steps, SEAM_PERCENTILE)) if steps.size else 0.0
    n = x.shape[1]
    change = _change(x[:, -_SPEC:], x[:, :_SPEC])
    inside = [_change(x[:, p - _SPEC : p], x[:, p : p + _SPEC]) for p in range(_SPEC, n - _SPEC + 1, _HOP)]
    change_limit = max(
        float(np.percentile(inside, SEAM_PERCENTILE)) if inside else 0.0, SEAM_MARGIN * natural_change
    )
    return Seam(jump, jump_limit, change, change_limit)


def _fold(measured: float | None, asked: float) -> float | None:
    """The measured tempo at the octave nearest the asked one (a half-time reading keeps its bars)."""
    if measured is None or measured <= 0:
        return None
    return measured * 2.0 ** round(math.log2(asked / measured))


def _rubberband(x: np.ndarray, rate: float, sample_rate: int, exe: str) -> np.ndarray:
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="dgx-music-loop-") as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        sf.write(src, x.T, sample_rate, subtype="FLOAT")
        # -T: tempo factor (> 1 faster); --fine: its R3 engine, the one measured.
        subprocess.run(
            [exe, "-q", "--fine", "-T", repr(rate), str(src), str(dst)], check=True, capture_output=True
        )
        y, _ = sf.read(dst, dtype="float32", always_2d=True)
    return np.ascontiguousarray(y.T)


def stretcher() -> str:
    """The time-stretcher loops use here: Rubber Band's CLI when installed, else librosa's."""
    return "rubberband" if shutil.which("rubberband") else "librosa"


def _stretch(x: np.ndarray, rate: float, sample_rate: int) -> np.ndarray:
    import librosa

    if abs(rate - 1.0) < 1e-6:
        return x
    exe = shutil.which("rubberband")
    if exe is not None:
        return _rubberband(x, rate, sample_rate, exe)
    return np.asarray(librosa.effects.time_stretch(x, rate=rate), dtype=np.float32)


def _start(x: np.ndarray, starts: list[int], span: int) -> int:
    """Of the candidate starts, the one whose audio one span later sounds most like it."""
    best, best_d = starts[0], math.inf
    for s in starts:
        if s + span + 2048 > x.shape[1]:
            continue
        d = float(np.mean(np.abs(_logspec(x[:, s : s + 2048]) - _logspec(x[:, s + span : s + span + 2048]))))
        if d < best_d:
            best, best_d = s, d
    return best


def _quiet_before(x: np.ndarray, at: int, reach: int, floor: int) -> int:
    """The sample in [at - reach, at] (not below `floor`) where the signal is nearest zero."""
    lo = max(floor, at - reach)
    if at <= lo:
        return at
    level = np.abs(x[:, lo : at + 1]).sum(axis=0)
    return lo + int(np.argmin(level))


def make_loop(
    audio: np.ndarray, sample_rate: int, *, bpm: float, bars: int, time_signature: str | None
) -> Looped:
    """`bars` bars of `audio` ([channels, samples]) at exactly `bpm`, joined without a click."""
    x = np.asarray(audio, dtype=np.float32)
    x = x if x.ndim == 2 else x[None]
    n = x.shape[1]
    target = int(round(loop_seconds(bars, bpm, time_signature) * sample_rate))
    measured = analyze(x, sample_rate, time_signature)
    tempo = _fold(measured.tempo_bpm, bpm) or float(bpm)
    fade = max(1, int(round(CROSSFADE_S * sample_rate)))
    span = int(round(target * bpm / tempo))
    lead = int(math.ceil(fade * span / target)) + 2  # source samples that become the crossfade
    span = max(1, min(span, n - lead))
    marks = [int(round(t * sample_rate)) for t in (measured.downbeats_s or measured.beats_s)]
    starts = [s for s in marks if lead <= s <= n - span] or [min(lead, max(0, n - span))]
    start = _quiet_before(x, _start(x, starts, span), int(CUT_BEFORE_S * sample_rate), lead)
    lead = min(lead, start)
    near = min(_SPEC, start, n - start)
    natural = _change(x[:, start - near : start], x[:, start : start + near]) if near >= 64 else 0.0
    rate = span / target
    stretched = _stretch(x[:, start - lead : start + span], rate, sample_rate)
    head = int(round(lead / rate))
    body = stretched[:, head : head + target]
    if body.shape[1] < target:  # the vocoder's rounding: a few samples short at most
        body = np.pad(body, ((0, 0), (0, target - body.shape[1])), mode="edge")
    body = body.copy()
    k = min(fade, head, target)
    if k > 0:
        w = (0.5 - 0.5 * np.cos(np.pi * (np.arange(k) + 1) / k)).astype(np.float32)
        body[:, -k:] = body[:, -k:] * (1.0 - w) + stretched[:, head - k : head] * w
    return Looped(
        audio=body,
        start_s=start / sample_rate,
        source_s=span / sample_rate,
        stretch=rate,
        stretcher=stretcher(),
        measured_bpm=measured.tempo_bpm,
        key=measured.key,
        seam=seam_of(body, natural),
    )
