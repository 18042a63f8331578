"""Audio files: every format and subtype written atomically and read back by soundfile."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from daemon.audio.encode import read_audio, write_audio

SR = 32000
COMBOS = [("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "FLOAT"), ("flac", "PCM_16"), ("flac", "PCM_24")]
# one quantization step, and a half more for rounding
TOLERANCE = {"PCM_16": 1.5 / 2**15, "PCM_24": 1.5 / 2**23, "FLOAT": 0.0}


def tone(channels: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    rows = [0.5 * np.sin(2 * np.pi * (220 * (c + 1)) * t) for c in range(channels)]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize(("fmt", "subtype"), COMBOS)
def test_round_trip_and_file_facts(tmp_path: Path, fmt: str, subtype: str, channels: int) -> None:
    audio = tone(channels)
    path = tmp_path / f"clip.{fmt}"
    info = write_audio(path, audio, SR, fmt, subtype)

    data = path.read_bytes()
    assert info.path == path
    assert info.bytes == len(data) == os.path.getsize(path)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert (info.format, info.subtype, info.sample_rate, info.channels) == (fmt, subtype, SR, channels)
    assert info.frames == audio.shape[1]
    assert info.duration_s == pytest.approx(0.5)

    meta = sf.info(str(path))
    assert meta.format == fmt.upper()
    assert meta.subtype == subtype
    assert (meta.samplerate, meta.channels, meta.frames) == (SR, channels, audio.shape[1])

    back, sr = read_audio(path)
    assert sr == SR
    assert back.shape == audio.shape
    assert np.abs(back - audio).max() <= TOLERANCE[subtype]
    assert os.listdir(tmp_path) == [path.name]  # no temp left behind


def test_flac_float_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FLOAT.*flac|flac"):
        write_audio(tmp_path / "x.flac", tone(1), SR, "flac", "FLOAT")  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("fmt", "subtype"), [("aiff", "PCM_16"), ("wav", "PCM_8")])
def test_unknown_format_or_subtype_is_refused(tmp_path: Path, fmt: str, subtype: str) -> None:
    with pytest.raises(ValueError):
        write_audio(tmp_path / "x", tone(1), SR, fmt, subtype)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("fmt", "subtype"), [("wav", "PCM_16"), ("wav", "PCM_24"), ("flac", "PCM_16")])
def test_pcm_is_clipped_not_wrapped(tmp_path: Path, fmt: str, subtype: str) -> None:
    audio = np.array([[0.0, 1.5, -1.5, 0.25, 3.0, -0.5]], dtype=np.float32)
    path = tmp_path / f"hot.{fmt}"
    write_audio(path, audio, SR, fmt, subtype)
    back, _ = read_audio(path)
    assert back.max() <= 1.0 and back.min() >= -1.0
    assert back[0, 1] == pytest.approx(1.0, abs=1e-4)  # clipped to full scale, not wrapped negative
    assert back[0, 2] == pytest.approx(-1.0, abs=1e-4)
    assert back[0, 4] == pytest.approx(1.0, abs=1e-4)
    assert back[0, 3] == pytest.approx(0.25, abs=1e-4)


def test_float_keeps_values_over_full_scale(tmp_path: Path) -> None:
    audio = np.array([[0.0, 1.5, -2.0]], dtype=np.float32)
    write_audio(tmp_path / "f.wav", audio, SR, "wav", "FLOAT")
    back, _ = read_audio(tmp_path / "f.wav")
    np.testing.assert_array_equal(back, audio)


def test_nan_is_refused(tmp_path: Path) -> None:
    audio = tone(1)
    audio[0, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_audio(tmp_path / "nan.wav", audio, SR)
    assert os.listdir(tmp_path) == []


def test_samples_by_channels_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channels, samples"):
        write_audio(tmp_path / "t.wav", tone(2).T, SR)
    assert os.listdir(tmp_path) == []


def test_create_new_never_overwrites_a_result(tmp_path: Path) -> None:
    path = tmp_path / "job.wav"
    first = write_audio(path, tone(1), SR, create_new=True)
    with pytest.raises(FileExistsError):
        write_audio(path, tone(2), SR, create_new=True)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first.sha256
    assert os.listdir(tmp_path) == ["job.wav"]


def test_overwrite_is_allowed_by_default_and_hash_follows(tmp_path: Path) -> None:
    path = tmp_path / "job.wav"
    first = write_audio(path, tone(1), SR)
    second = write_audio(path, tone(2), SR)
    assert first.sha256 != second.sha256
    assert hashlib.sha256(path.read_bytes()).hexdigest() == second.sha256


def test_long_stereo_file_hash_covers_every_byte(tmp_path: Path) -> None:
    # bigger than the hashing chunk: the digest must still match the whole file
    audio = tone(2, seconds=20.0)
    info = write_audio(tmp_path / "long.wav", audio, SR, "wav", "FLOAT")
    assert info.bytes > 4 << 20
    assert info.sha256 == hashlib.sha256((tmp_path / "long.wav").read_bytes()).hexdigest()
    assert info.duration_s == pytest.approx(20.0)
