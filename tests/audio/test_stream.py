"""Loudness, true peak, limiter, waveform and encoding of a clip read block by block (daemon.audio.stream,
encode.write_audio of a clip), against the whole-signal functions they stand in for and against ffmpeg.

Blocks here are a fraction of a second, so a few seconds of audio cross many block joins."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from daemon.audio import loudness, stream
from daemon.audio.encode import FileClip, read_audio, write_audio
from daemon.audio.waveform import peak_envelope
from daemon.core.pcm import Pcm
from tests.audio.test_loudness import SR, ffmpeg_ebur128, music_like, noise

BLOCK = 1 << 13  # 0.26 s at 32 kHz


def material(name: str) -> np.ndarray:
    if name == "music":
        return music_like(6.0, level=0.25)
    return noise(5.0, channels=1) * np.float32(6.0)


def test_a_clip_on_disk_reads_back_what_was_appended() -> None:
    x = np.random.default_rng(0).standard_normal((2, 10_000)).astype(np.float32)
    pcm = Pcm(2)
    for start in range(0, 10_000, 3_000):
        pcm.append(x[:, start : start + 3_000])
    assert pcm.shape == (2, 10_000)
    assert np.array_equal(pcm.read(2_500, 7_100), x[:, 2_500:7_100])
    assert np.array_equal(pcm.array(), x)
    pcm.fit(12_000)  # padded with silence
    assert np.array_equal(pcm.read(9_000), np.pad(x[:, 9_000:], ((0, 0), (0, 2_000))))
    pcm.fit(4_000)
    assert np.array_equal(Pcm.from_array(pcm.array()).array(), x[:, :4_000])
    with pytest.raises(ValueError, match=r"\[2, samples\]"):
        pcm.append(x[:1])


@pytest.mark.parametrize("name", ["music", "noise"])
def test_block_meters_equal_the_whole_signal_meters(name: str) -> None:
    x = material(name)
    lufs, peak = stream.measure_clip(Pcm.from_array(x), SR, BLOCK)
    assert lufs == pytest.approx(loudness.integrated_lufs(x, SR), abs=1e-6)
    assert peak == pytest.approx(loudness.true_peak_dbtp(x, SR), abs=1e-6)
    shape = stream.EnvelopeBuilder(x.shape[1])
    for start in range(0, x.shape[1], 5_000):
        shape.feed(x[:, start : start + 5_000])
    assert shape.envelope() == peak_envelope(x)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")
@pytest.mark.parametrize("name", ["music", "noise"])
def test_streamed_normalisation_equals_the_whole_signal_one(name: str, tmp_path: Path) -> None:
    """Both materials peak far over the ceiling at -10 LUFS: the limiter works across block joins.
    Gain, loudness and true peak within 0.1 of `normalize`; the file measured by ffmpeg agrees."""
    x = material(name)
    clip = Pcm.from_array(x)
    whole = loudness.normalize(x, SR, -10.0, -1.0)
    plan = stream.normalize_clip(clip, SR, -10.0, -1.0, BLOCK)
    assert plan.limiter_reduction_db > 1.0
    assert plan.gain_db == pytest.approx(whole.gain_db, abs=0.1)
    assert plan.integrated_lufs == pytest.approx(whole.integrated_lufs, abs=0.1)
    assert plan.true_peak_dbtp == pytest.approx(whole.true_peak_dbtp, abs=0.1)
    out = Pcm(clip.channels)
    for block, _ in stream.render(clip, SR, plan.gain_db, plan.ceiling_dbtp, BLOCK):
        out.append(block)
    assert loudness.true_peak_dbtp(out.array(), SR) <= -1.0 + 1e-6
    assert loudness.integrated_lufs(out.array(), SR) == pytest.approx(plan.integrated_lufs, abs=1e-6)
    info = write_audio(tmp_path / f"{name}.wav", out, SR, "wav", "FLOAT", block=BLOCK)
    lufs, peak = ffmpeg_ebur128(info.path)
    assert lufs == pytest.approx(plan.integrated_lufs, abs=0.15)
    assert peak == pytest.approx(plan.true_peak_dbtp, abs=0.2)


@pytest.mark.parametrize(
    ("fmt", "subtype", "codec"),
    [("wav", "PCM_16", None), ("flac", "PCM_24", None), ("ogg", "PCM_16", "opus")],
)
def test_a_clip_is_encoded_as_the_in_memory_writer_encodes_it(
    fmt: str, subtype: str, codec: str | None, tmp_path: Path
) -> None:
    """Same bytes (opus: 32 kHz resampled to 48 kHz block by block, the same samples), hash, frames."""
    x = music_like(3.0, level=0.3)
    tags = {"title": "a clip"}
    whole = write_audio(tmp_path / f"whole.{fmt}", x, SR, fmt, subtype, codec=codec, tags=tags)  # type: ignore[arg-type]
    clip = write_audio(
        tmp_path / f"clip.{fmt}",
        Pcm.from_array(x),
        SR,
        fmt,
        subtype,
        codec=codec,
        tags=tags,
        block=BLOCK,  # type: ignore[arg-type]
    )
    data = clip.path.read_bytes()
    assert clip.sha256 == hashlib.sha256(data).hexdigest() and clip.bytes == len(data)
    assert (clip.sample_rate, clip.channels, clip.frames) == (whole.sample_rate, whole.channels, whole.frames)
    if fmt == "ogg":  # Ogg pages carry a random stream serial number: compare what decodes
        assert np.array_equal(read_audio(clip.path)[0], read_audio(whole.path)[0])
    else:
        assert data == whole.path.read_bytes()
    with FileClip(clip.path) as back:
        assert back.samples == clip.frames
        assert np.array_equal(
            np.concatenate([back.read(s, s + 5_000) for s in range(0, back.samples, 5_000)], 1),
            read_audio(clip.path)[0],
        )
