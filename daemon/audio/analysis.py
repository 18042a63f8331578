"""What came out, measured: tempo, beats and downbeats, key and mode, loudness range.

Runs on the audio as written (decoded again from the file), in the publisher's thread, with
librosa for the signal features (resampling, mel spectrogram, onset strength, autocorrelation,
chroma). No numba-compiled librosa function is used, so the first job pays no compilation. The
file is read a block at a time: its mono mix at 22.05 kHz goes to a temporary clip on disk and
the spectra are taken a run of frames at a time, so what stays in memory is the features (a few
hundred bytes a second), not the piece.

Tempo: the onset-strength envelope (11.6 ms frames at 22.05 kHz) is autocorrelated; the beat
period is the strongest autocorrelation peak between 55 and 220 BPM (the decay of the biased
autocorrelation makes the shorter of two equally periodic lags win, and an off-beat half period
that is not played scores low), refined to a fraction of a frame by fitting the peaks at every
multiple of the period through the envelope's length. Confidence: that autocorrelation relative
to lag 0 (1 is perfectly periodic). Beats are a constant-tempo grid at that period, at the phase
whose grid points carry the most onset strength (generated music keeps one tempo: a grid does not
drift where a tracker does, at the ends);
downbeats are every bar's first beat (beats per bar from the time signature, 4/4 when none), the
bar phase being the one whose beats carry the most energy, low bands (kick) counted twice.

Key: the chroma summed over the piece is correlated with the Albrecht-Shanahan profiles of all
24 keys; the best is the key, its correlation the confidence.

Loudness range: EBU Tech 3342 LRA (3 s short-term loudness every 0.1 s, gated at -70 LUFS and
-20 LU below their mean, the 10th to 95th percentile spread).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import soxr

from daemon.audio.stream import BLOCK_SAMPLES, BlockEnergies
from daemon.core.pcm import ArrayClip, Clip, Pcm
from jobspec.music import Mode, bar_beats, key_name

RATE = 22050
HOP = 256
TEMPO_RANGE_BPM = (55.0, 220.0)
# Albrecht & Shanahan (2013) key profiles, tonic first: pitch-class shares in a corpus of real
# pieces. On harmonic-rich tones they keep minor keys minor where Krumhansl-Kessler's probe-tone
# profiles took 3 of 12 synthetic minor progressions for the parallel major (the fifth harmonic
# of every root is its major third).
_MAJOR = np.array([0.238, 0.006, 0.111, 0.006, 0.137, 0.094, 0.016, 0.214, 0.009, 0.080, 0.008, 0.081])
_MINOR = np.array([0.220, 0.006, 0.104, 0.123, 0.019, 0.103, 0.012, 0.214, 0.062, 0.022, 0.061, 0.052])
# Onsets between the pulses at this share of the pulses' strength make the faster level the beat.
SUBDIVISION_RATIO = 0.62
_LOW_MELS = 8
# The onset envelope peaks this long after an onset (median 14-19 ms on clicks and drums at
# 80-150 BPM): beat times are moved back by it, so that a cut at a downbeat lands on the attack.
ONSET_LAG_S = 1.5 * HOP / RATE  # of 64 mel bands up to ~250 Hz: kick drums and bass, for the bar phase


@dataclass(frozen=True)
class Measured:
    """The analysis of one audio file (times in seconds from its start)."""

    tempo_bpm: float | None
    tempo_confidence: float
    beats_s: list[float]
    downbeats_s: list[float]
    key: str | None
    key_confidence: float
    loudness_range_lu: float | None
    seconds: float


def _librosa() -> ModuleType:
    """librosa, imported with numba's cache somewhere writable: importing it compiles a few
    functions with cache=True, which fails ("no locator available") where the venv belongs to
    another user, as the service's does. The unit names its own cache (NUMBA_CACHE_DIR)."""
    os.environ.setdefault(
        "NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"dgx-music-numba-{os.getuid()}")
    )
    import librosa

    return librosa


def _mono_and_range(clip: Clip, sample_rate: int) -> tuple[Pcm, float | None]:
    """One pass over `clip`, a block at a time: its mono mix at RATE (a clip on disk, as librosa's
    soxr_hq resampling of the whole signal makes it) and its loudness range."""
    directory = getattr(clip, "directory", None)
    y = Pcm(1, directory)
    win, hop = int(3.0 * sample_rate), int(0.1 * sample_rate)
    starts = np.arange(0, max(0, clip.samples - win + 1), hop)
    energies = BlockEnergies(sample_rate, clip.channels, starts, starts + win)
    stream = (
        None
        if sample_rate == RATE
        else soxr.ResampleStream(sample_rate, RATE, 1, dtype="float32", quality="HQ")
    )
    for start in range(0, max(clip.samples, 1), BLOCK_SAMPLES):
        x = np.asarray(clip.read(start, start + BLOCK_SAMPLES), dtype=np.float32)
        energies.feed(x)
        mono = x.mean(axis=0)
        if stream is not None:
            mono = stream.resample_chunk(mono, last=start + BLOCK_SAMPLES >= clip.samples)
        y.append(mono[None, :])
    y.fit(math.ceil(clip.samples * RATE / sample_rate))  # librosa.resample's own length
    lra = _range(energies.energies().sum(axis=0) / win) if starts.size else None
    return y, lra


def _framed(y: Pcm, n_fft: int, hop: int, frames_per_chunk: int) -> Iterator[np.ndarray]:
    """`y` cut into the spans a centred STFT (zero padding) reads for each run of
    `frames_per_chunk` frames: an STFT with center=False of each gives the whole signal's frames."""
    frames = 1 + y.samples // hop
    half = n_fft // 2
    for a in range(0, frames, frames_per_chunk):
        b = min(frames, a + frames_per_chunk)
        lo, hi = a * hop - half, (b - 1) * hop + half + (n_fft % 2)
        seg = y.read(max(0, lo), max(0, hi))[0]
        yield np.pad(seg, (max(0, -lo), hi - lo - seg.shape[0] - max(0, -lo)))


def _peak_near(acf: np.ndarray, lag: float, reach: int) -> tuple[float, float] | None:
    """The autocorrelation peak within `reach` frames of `lag`: (lag, height), sub-frame by a parabola."""
    lo, hi = max(1, int(lag) - reach), min(len(acf) - 2, int(math.ceil(lag)) + reach)
    if hi <= lo:
        return None
    i = lo + int(np.argmax(acf[lo : hi + 1]))
    a, b, c = acf[i - 1], acf[i], acf[i + 1]
    den = a - 2 * b + c
    shift = 0.5 * (a - c) / den if den < 0 else 0.0
    return i + float(np.clip(shift, -0.5, 0.5)), float(b)


def _comb(env: np.ndarray, period: float, phase: float) -> float:
    """Mean onset strength on the grid phase + k * period (each point's frame and neighbours)."""
    i = np.round(np.arange(phase, len(env) - 1, period)).astype(int)
    if len(i) == 0:
        return 0.0
    near = np.maximum(env[i], np.maximum(env[np.maximum(i - 1, 0)], env[np.minimum(i + 1, len(env) - 1)]))
    return float(near.mean())


def _subdivided(env: np.ndarray, period: float, parts: int) -> bool:
    """Whether the points between the pulses of `period` (at its best phase) are played nearly as
    strongly as the pulses: then the beat is the faster level, period / parts."""
    phases = np.arange(0.0, period, 0.5)
    strength = [_comb(env, period, p) for p in phases]
    best = float(phases[int(np.argmax(strength))])
    pulse = max(strength)
    if pulse <= 0:
        return False
    between = np.mean([_comb(env, period, best + k * period / parts) for k in range(1, parts)])
    return bool(between >= SUBDIVISION_RATIO * pulse)


def _refined(acf: np.ndarray, lag: float) -> float:
    """`lag` to a fraction of a frame: the slope fitted through its autocorrelation peaks at every
    multiple of it over the envelope's length."""
    first = _peak_near(acf, lag, 1)
    if first is None:
        return lag
    period = first[0]
    lags, ms = [first[0]], [1]
    m = 2
    while m * period < 0.9 * len(acf):
        peak = _peak_near(acf, m * period, 2)
        if peak is None or peak[1] <= 0:
            break
        lags.append(peak[0])
        ms.append(m)
        period = float(np.dot(ms, lags) / np.dot(ms, ms))
        m += 1
    return period


def beat_period(env: np.ndarray) -> tuple[float, float] | None:
    """(period in frames, confidence 0..1) of an onset envelope; None when nothing repeats."""
    librosa = _librosa()

    e = env - env.mean()
    if not np.any(e):
        return None
    acf = librosa.autocorrelate(e)
    acf = acf / acf[0]
    fps = RATE / HOP
    lo = int(math.floor(60.0 * fps / TEMPO_RANGE_BPM[1]))
    hi = min(len(acf) - 2, int(math.ceil(60.0 * fps / TEMPO_RANGE_BPM[0])))
    if hi <= lo + 2:
        return None
    coarse = float(lo + int(np.argmax(acf[lo : hi + 1])))
    if acf[int(coarse)] <= 0:
        return None
    # The strongest periodicity, then faster metrical levels while the points between are played.
    period = _refined(acf, coarse)
    while True:
        if period / 2 >= lo and _subdivided(env, period, 2):
            period = _refined(acf, period / 2)
        elif period / 3 >= lo and _subdivided(env, period, 3):
            period = _refined(acf, period / 3)
        else:
            break
    first = _peak_near(acf, period, 1)
    if first is None or first[1] <= 0:
        return None
    return period, float(np.clip(first[1], 0.0, 1.0))


def _grid(env: np.ndarray, period: float) -> np.ndarray:
    """The beats in frames: a constant-tempo grid through the whole clip at the measured period,
    at the phase whose grid points carry the most onset strength."""
    phases = np.arange(0.0, period, 0.25)
    at = np.arange(len(env), dtype=float)

    def strength(phase: float) -> float:
        return float(np.interp(np.arange(phase, len(env) - 1, period), at, env).sum())

    phase = float(phases[int(np.argmax([strength(p) for p in phases]))])
    return phase + period * np.arange(int(math.floor((len(env) - 1 - phase) / period)) + 1)


def _downbeats(beats: np.ndarray, accent: np.ndarray, per_bar: int) -> np.ndarray:
    if per_bar <= 1 or len(beats) < per_bar:
        return beats
    # The loudest frame of each beat's attack (the grid sits at the envelope's peak, 1.5 frames late).
    idx = np.round(beats).astype(int)
    hit = np.array([accent[max(0, i - 2) : i + 3].max(initial=0.0) for i in idx])
    strength = [float(np.median(hit[p::per_bar])) for p in range(per_bar)]
    return beats[int(np.argmax(strength)) :: per_bar]


def _key(y: Pcm) -> tuple[str | None, float]:
    librosa = _librosa()

    # STFT chroma: 2.7 Hz bins resolve bass notes, at a quarter of the constant-Q chroma's cost.
    # A440 tuning assumed: the estimate costs time and warns on near-silence. Each frame is
    # normalised on its own, so the sum over the piece is taken a run of frames at a time.
    profile = np.zeros(12)
    for seg in _framed(y, 8192, 2048, 64):
        chroma = librosa.feature.chroma_stft(
            y=seg, sr=RATE, n_fft=8192, hop_length=2048, tuning=0.0, center=False
        )
        profile += chroma.sum(axis=1)
    if not np.any(profile > 0):
        return None, 0.0
    best: tuple[float, int, Mode] = (-2.0, 0, "major")
    for mode, ref in (("major", _MAJOR), ("minor", _MINOR)):
        for tonic in range(12):
            r = float(np.corrcoef(profile, np.roll(ref, tonic))[0, 1])
            if r > best[0]:
                best = (r, tonic, mode)  # type: ignore[assignment]
    r, tonic, mode = best
    return key_name(tonic, mode), float(np.clip(r, 0.0, 1.0))


def loudness_range(audio: np.ndarray, sample_rate: int) -> float | None:
    """EBU Tech 3342 loudness range in LU; None when under 3 s or below the gates."""
    return _mono_and_range(ArrayClip(audio), sample_rate)[1]


def _range(mean_sq: np.ndarray) -> float | None:
    """The loudness range of short-term (3 s) mean squares, K-weighted and summed over channels."""
    with np.errstate(divide="ignore"):
        st = -0.691 + 10 * np.log10(mean_sq)
    st = st[st > -70.0]
    if len(st) == 0:
        return None
    rel = -0.691 + 10 * np.log10(np.mean(10 ** ((st + 0.691) / 10))) - 20.0
    st = st[st > rel]
    return float(np.percentile(st, 95) - np.percentile(st, 10))


def analyze(audio: np.ndarray | Clip, sample_rate: int, time_signature: str | None = None) -> Measured:
    """Measure `audio` ([channels, samples] or [samples], or a clip read block by block: a long
    piece is never in memory whole, only its features) at `sample_rate`."""
    librosa = _librosa()

    clip = ArrayClip(audio) if isinstance(audio, np.ndarray) else audio
    y, lra = _mono_and_range(clip, sample_rate)
    seconds = y.samples / RATE
    if y.samples < 2 * 2048 or not any(np.any(b) for _, b in y.blocks()):
        return Measured(None, 0.0, [], [], None, 0.0, lra, seconds)
    power = np.concatenate(
        [
            librosa.feature.melspectrogram(y=seg, sr=RATE, hop_length=HOP, n_mels=64, center=False)
            for seg in _framed(y, 2048, HOP, 2048)
        ],
        axis=1,
    )
    env = librosa.onset.onset_strength(S=librosa.power_to_db(power), sr=RATE, hop_length=HOP)
    key, key_conf = _key(y)
    y.close()
    found = beat_period(env)
    if found is None:
        return Measured(None, 0.0, [], [], key, key_conf, lra, seconds)
    period, conf = found
    bpm = 60.0 * RATE / HOP / period
    frames = _grid(env, period)
    per_bar = max(1, round(bar_beats(time_signature)))
    # Bar phase: the beats with the most energy (linear: log onset strength hardly sees a louder
    # hit), the low bands (kick, bass) counted twice.
    full, low = power.sum(axis=0), power[:_LOW_MELS].sum(axis=0)
    down = _downbeats(frames, full / (full.max() or 1.0) + 2 * low / (low.max() or 1.0), per_bar)
    times = np.maximum(0.0, frames * HOP / RATE - ONSET_LAG_S)
    down_t = np.maximum(0.0, down * HOP / RATE - ONSET_LAG_S)
    return Measured(
        tempo_bpm=bpm,
        tempo_confidence=conf,
        beats_s=[round(float(t), 3) for t in times],
        downbeats_s=[round(float(t), 3) for t in down_t],
        key=key,
        key_confidence=key_conf,
        loudness_range_lu=lra,
        seconds=seconds,
    )
