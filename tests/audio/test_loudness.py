"""Loudness normalization and the true-peak limiter, measured on files written to disk."""

from __future__ import annotations

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
    start = time.perf_counter()
    result = normalize(audio, SR, -9.0, -1.0)
    elapsed = time.perf_counter() - start
    assert result.true_peak_dbtp <= -1.0
    assert result.integrated_lufs == pytest.approx(-9.0, abs=0.5)
    # about 2 s (plain gain) to 6 s (9 dB of limiting, 3 passes) on one idle core; CI boxes are shared
    assert elapsed < 30.0, f"300 s stereo took {elapsed:.1f} s"
