"""Loudness normalization and the true-peak limiter, measured on files written to disk."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from daemon.audio.encode import read_audio, write_audio
from daemon.audio.loudness import (
    LOOKAHEAD_S,
    integrated_lufs,
    limit_true_peak,
    normalize,
    true_peak_dbtp,
)
from daemon.outbox.publish import write_variation
from jobspec import Output

SR = 32000


def music_like(seconds: float, *, channels: int = 2, level: float = 0.05, seed: int = 0) -> np.ndarray:
    """Chords plus decaying drum hits plus noise: a crest factor like real music."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (110.0, 220.0, 277.2, 329.6, 440.0))
    hits = np.zeros(n)
    for start in range(0, n, SR // 2):  # a kick every half second
        m = min(n - start, SR // 8)
        hits[start : start + m] = (
            3.0 * np.exp(-np.arange(m) / (SR * 0.02)) * np.sin(2 * np.pi * 60 * np.arange(m) / SR)
        )
    base = level * (tones / 5 + hits) + 0.01 * rng.standard_normal(n)
    out = np.stack([base * (1.0 - 0.1 * c) + 0.005 * rng.standard_normal(n) for c in range(channels)])
    return out.astype(np.float32)


def sine(seconds: float, dbfs: float, freq: float = 997.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t)
    return np.tile(x, (channels, 1)).astype(np.float32)


def written(tmp_path: Path, audio: np.ndarray, fmt: str = "wav", subtype: str = "PCM_24") -> np.ndarray:
    info = write_audio(tmp_path / f"out.{fmt}", audio, SR, fmt, subtype)
    back, sr = read_audio(info.path)
    assert sr == SR
    return back


# ---------------------------------------------------------------- the meters


def test_integrated_lufs_of_a_full_scale_sine_matches_bs1770() -> None:
    # BS.1770 calibration: a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS
    assert integrated_lufs(sine(3, 0.0), SR) == pytest.approx(-3.01, abs=0.1)
    # stereo sums the channels' power: +3 dB
    assert integrated_lufs(sine(3, 0.0, channels=2), SR) == pytest.approx(0.0, abs=0.1)


def test_true_peak_finds_the_peak_between_samples() -> None:
    # fs/4 sine at 45 degrees: every sample sits at 0.707 of the waveform's true peak
    n = np.arange(SR)
    x = np.sin(2 * np.pi * n / 4 + np.pi / 4).astype(np.float32)[None]
    sample_peak_db = 20 * np.log10(np.abs(x).max())
    assert sample_peak_db == pytest.approx(-3.01, abs=0.01)
    assert true_peak_dbtp(x, SR) == pytest.approx(0.0, abs=0.2)


def test_short_clips_are_measured_not_refused() -> None:
    # pyloudnorm alone refuses anything under its 400 ms gating block
    short = sine(0.2, -10.0)
    assert integrated_lufs(short, SR) == pytest.approx(integrated_lufs(sine(3, -10.0), SR), abs=0.3)
    result = normalize(short, SR, -20.0, -1.0)
    assert result.audio.shape == short.shape
    assert result.integrated_lufs == pytest.approx(-20.0, abs=0.5)


# ---------------------------------------------------------------- normalization on written files


@pytest.mark.parametrize(
    ("fmt", "subtype"),
    [("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "FLOAT"), ("flac", "PCM_16"), ("flac", "PCM_24")],
)
def test_normalized_file_is_on_target_and_under_the_ceiling(tmp_path: Path, fmt: str, subtype: str) -> None:
    audio = music_like(4.0)
    before = integrated_lufs(audio, SR)
    assert before < -22  # quiet input: normalization must add gain
    result = normalize(audio, SR, -14.0, -1.0)
    back = written(tmp_path, result.audio, fmt, subtype)
    on_disk_lufs = integrated_lufs(back, SR)
    on_disk_peak = true_peak_dbtp(back, SR)
    assert on_disk_lufs == pytest.approx(-14.0, abs=0.5)
    assert on_disk_peak <= -1.0
    # what normalize() reports is what the file holds
    assert result.integrated_lufs == pytest.approx(on_disk_lufs, abs=0.05)
    assert result.true_peak_dbtp == pytest.approx(on_disk_peak, abs=0.05)
    assert result.input_lufs == pytest.approx(before)
    assert result.gain_db > 8.0
    assert result.skipped_reason is None


def test_limiter_engages_on_loud_transients_and_keeps_loudness(tmp_path: Path) -> None:
    audio = music_like(4.0)
    result = normalize(audio, SR, -10.0, -1.0)
    assert result.limiter_reduction_db > 3.0  # the kicks had to be pulled down
    back = written(tmp_path, result.audio, "wav", "PCM_16")
    assert true_peak_dbtp(back, SR) <= -1.0
    assert integrated_lufs(back, SR) == pytest.approx(-10.0, abs=0.5)


def test_loud_sine_boosted_to_a_loud_target_ends_under_the_ceiling(tmp_path: Path) -> None:
    # -0.1 dBFS sine reads about -3.2 LUFS; -8 needs a cut, -3 a boost past the ceiling
    for target in (-8.0, -3.0):
        result = normalize(sine(3, -0.1, channels=2), SR, target, -1.0)
        back = written(tmp_path, result.audio, "wav", "FLOAT")
        assert true_peak_dbtp(back, SR) <= -1.0
        assert result.integrated_lufs == pytest.approx(integrated_lufs(back, SR), abs=0.05)
    # -8 is reachable under a -1 dBTP ceiling: it must be met
    assert normalize(sine(3, -0.1, channels=2), SR, -8.0, -1.0).integrated_lufs == pytest.approx(
        -8.0, abs=0.5
    )


def test_unreachable_target_reports_what_was_achieved() -> None:
    # a sine can be no louder than about -4 LUFS with its peak at -1 dBTP (mono)
    result = normalize(sine(3, -20.0), SR, -2.0, -1.0)
    assert result.true_peak_dbtp <= -1.0
    assert result.integrated_lufs == pytest.approx(integrated_lufs(result.audio, SR), abs=1e-6)
    assert -5.0 < result.integrated_lufs < -3.5
    assert result.limiter_reduction_db < 10.0  # no runaway make-up gain


def test_limiter_gain_is_smooth_not_a_hard_clip() -> None:
    audio = music_like(2.0, channels=1, level=0.6)
    limited, reduction, peak = limit_true_peak(audio, SR, -1.0)
    assert reduction > 3.0
    assert peak <= -1.0
    mask = np.abs(audio[0]) > 0.05
    gain = limited[0][mask] / audio[0][mask]
    assert np.all(gain <= 1.0 + 1e-6)
    # one limiter channel gain for all samples: the ratio moves by at most 1/lookahead per sample
    look = int(round(LOOKAHEAD_S * SR))
    idx = np.flatnonzero(mask)
    consecutive = np.diff(idx) == 1
    steps = np.abs(np.diff(gain))[consecutive]
    assert steps.max() <= 1.0 / look + 1e-4
    # a hard clip would flatten the tops: the limited signal keeps its waveform shape
    clipped = np.clip(audio, -(10 ** (-1 / 20)), 10 ** (-1 / 20))
    assert not np.allclose(limited, clipped, atol=1e-3)


def test_limiter_leaves_quiet_audio_alone() -> None:
    audio = music_like(1.0, level=0.01)
    limited, reduction, _ = limit_true_peak(audio, SR, -1.0)
    assert reduction == 0.0
    np.testing.assert_array_equal(limited, audio)


# ---------------------------------------------------------------- skips


def test_digital_silence_is_left_alone(tmp_path: Path) -> None:
    silence = np.zeros((2, SR * 2), dtype=np.float32)
    result = normalize(silence, SR, -16.0, -1.0)
    assert result.skipped_reason == "silence"
    assert result.gain_db == 0.0
    assert result.input_lufs == float("-inf")
    np.testing.assert_array_equal(result.audio, silence)
    np.testing.assert_array_equal(written(tmp_path, result.audio), silence)


def test_near_silence_below_minus_70_lufs_is_not_boosted() -> None:
    hiss = (np.random.default_rng(1).standard_normal((1, SR * 2)) * 10 ** (-85 / 20)).astype(np.float32)
    assert integrated_lufs(hiss, SR) < -70
    result = normalize(hiss, SR, -16.0, -1.0)
    assert result.skipped_reason == "silence"
    np.testing.assert_array_equal(result.audio, hiss)


def test_no_target_skips_loudness_but_still_limits() -> None:
    loud = sine(2, 0.0)
    result = normalize(loud, SR, None, -1.0)
    assert result.skipped_reason == "no_target"
    assert result.gain_db == 0.0
    assert result.true_peak_dbtp <= -1.0
    untouched = normalize(loud, SR, None, None)
    np.testing.assert_array_equal(untouched.audio, loud)
    assert untouched.true_peak_dbtp == pytest.approx(0.0, abs=0.05)


def test_no_ceiling_skips_the_limiter() -> None:
    result = normalize(sine(2, -20.0), SR, -1.0, None)
    assert result.limiter_reduction_db == 0.0
    assert result.integrated_lufs == pytest.approx(-1.0, abs=0.1)
    assert result.true_peak_dbtp > 0.0  # over full scale: the caller asked for no ceiling


def test_input_array_is_not_modified() -> None:
    audio = music_like(1.0)
    copy = audio.copy()
    normalize(audio, SR, -9.0, -1.0)
    np.testing.assert_array_equal(audio, copy)


def test_nan_is_an_error_not_silence() -> None:
    audio = music_like(1.0)
    audio[1, 100] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        normalize(audio, SR, -16.0, -1.0)


def test_samples_by_channels_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="channels"):
        normalize(np.zeros((SR, 2), dtype=np.float32), SR, -16.0, -1.0)


@pytest.mark.slow
def test_five_minutes_of_stereo_is_fast() -> None:
    audio = music_like(300.0)
    # This process's CPU seconds, not the wall clock: what other processes on a shared box do
    # (they slow the wall clock, not this count) cannot fail the test.
    start = time.process_time()
    result = normalize(audio, SR, -9.0, -1.0)
    cpu_s = time.process_time() - start
    assert result.true_peak_dbtp <= -1.0
    assert result.integrated_lufs == pytest.approx(-9.0, abs=0.5)
    # about 2 s (plain gain) to 6 s (9 dB of limiting, 3 passes) of one core
    assert cpu_s < 30.0, f"300 s stereo took {cpu_s:.1f} CPU seconds"


# ---------------------------------------------------------------- judged by an outside meter


def ffmpeg_ebur128(path: Path) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of a file as ffmpeg's ebur128 filter measures it (4x
    oversampled true peak): a meter that shares no code with the daemon's."""
    proc = subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-nostats",
            "-i",
            str(path),
            "-af",
            "ebur128=peak=true",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    summary = proc.stderr[proc.stderr.rindex("Summary:") :]
    lufs = re.search(r"I:\s+(-?[0-9.]+|-inf) LUFS", summary)
    peak = re.search(r"True peak:\s+Peak:\s+(-?[0-9.]+|-inf) dBFS", summary)
    assert lufs and peak, summary
    return float(lufs.group(1)), float(peak.group(1))


def noise(seconds: float, *, channels: int = 2, seed: int = 1) -> np.ndarray:
    """Pink-ish noise: white noise through a gentle low-pass, a crest factor near 12 dB."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((channels, int(seconds * SR)))
    kernel = np.exp(-np.arange(64) / 8.0)
    return (0.05 * np.stack([np.convolve(c, kernel / kernel.sum(), "same") for c in white])).astype(
        np.float32
    )


# (format, subtype, codec): every container and codec a job can ask for.
FORMATS = [
    ("wav", "PCM_16", None),
    ("wav", "PCM_24", None),
    ("wav", "FLOAT", None),
    ("flac", "PCM_24", None),
    ("mp3", "PCM_16", None),
    ("ogg", "PCM_16", "vorbis"),
    ("ogg", "PCM_16", "opus"),
]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")
@pytest.mark.parametrize("material", ["music", "noise"])
@pytest.mark.parametrize("target, ceiling", [(-16.0, -1.0), (-10.0, -1.0)])
def test_written_files_meet_target_and_ceiling_by_ffmpeg(
    tmp_path: Path, material: str, target: float, ceiling: float
) -> None:
    """Normalised and written by the publish step's own function, in every format, measured by
    ffmpeg: integrated loudness within 0.5 LU of the target, true peak at most 0.2 dB over the
    ceiling (lossy encoders overshoot their input's peak; the step makes up for it). At -10 LUFS
    both materials peak far over the ceiling before limiting, so the limiter is what is judged."""
    audio = music_like(4.0, level=0.2) if material == "music" else noise(4.0)
    for fmt, subtype, codec in FORMATS:
        output = Output(format=fmt, subtype=subtype, codec=codec)
        written = write_variation(
            tmp_path / f"{material}-{subtype}-{codec}.{fmt}", audio, SR, output, target, ceiling, tags={}
        )
        if target == -10.0:
            assert written.plan.limiter_reduction_db > 1.0  # the limiter really worked on this material
        lufs, peak = ffmpeg_ebur128(written.info.path)
        where = f"{fmt}/{subtype}/{codec}: {lufs} LUFS, {peak} dBTP (sidecar: {written.lufs}, {written.peak})"
        assert abs(lufs - target) <= 0.5, where
        assert peak <= ceiling + 0.2, where


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")
def test_the_daemons_meters_agree_with_ffmpeg(tmp_path: Path) -> None:
    """The meters that drive the limiter, against ffmpeg on the same files: noise, music and a
    sine at fs/4 whose samples miss its crests by 3 dB (what 1x sampling cannot see)."""
    t = np.arange(4 * SR) / SR
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.1)  # no edge: its ringing would be a real peak
    offset = (0.5 * fade * np.sin(2 * np.pi * (SR / 4) * t + np.pi / 4))[None].astype(np.float32)
    for name, audio in (("noise", noise(4.0)), ("music", music_like(4.0, level=0.2)), ("fs4", offset)):
        info = write_audio(tmp_path / f"{name}.wav", audio, SR, "wav", "FLOAT")
        lufs, peak = ffmpeg_ebur128(info.path)
        assert integrated_lufs(audio, SR) == pytest.approx(lufs, abs=0.2), name
        assert true_peak_dbtp(audio, SR) == pytest.approx(peak, abs=0.2), name
    assert peak == pytest.approx(20 * np.log10(0.5), abs=0.2)  # the crests, 3 dB over any sample
