"""mp3 and ogg (vorbis, opus) previews and the tags of every format, judged by ffprobe."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from daemon.audio.encode import read_audio, write_audio

SR = 32000
TAGS = {
    "title": "warm lo-fi piano, vinyl",
    "comment": "job loop seed 7 model tiny",
    "software": "dgx-music 9.9",
    "date": "2026-12-01",
}
pytestmark = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffprobe")


def tone(channels: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return np.stack([0.4 * np.sin(2 * np.pi * 220 * (c + 1) * t) for c in range(channels)]).astype(np.float32)


def probe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def all_tags(meta: dict) -> dict[str, str]:
    # mp3/wav/flac keep tags on the container, ogg on the stream; ffprobe reports them where they are.
    tags = {k.lower(): v for k, v in meta["format"].get("tags", {}).items()}
    for stream in meta["streams"]:
        tags.update({k.lower(): v for k, v in stream.get("tags", {}).items()})
    return tags


@pytest.mark.parametrize(
    ("fmt", "codec", "ffformat", "ffcodec", "rate"),
    [
        ("wav", None, "wav", "pcm_s16le", SR),
        ("flac", None, "flac", "flac", SR),
        ("mp3", None, "mp3", "mp3", SR),
        ("ogg", "vorbis", "ogg", "vorbis", SR),
        ("ogg", "opus", "ogg", "opus", 48000),
    ],
)
def test_every_format_is_what_ffprobe_says_with_its_title(
    tmp_path: Path, fmt: str, codec: str | None, ffformat: str, ffcodec: str, rate: int
) -> None:
    path = tmp_path / f"clip.{fmt}"
    info = write_audio(path, tone(2), SR, fmt, codec=codec, tags=TAGS)  # type: ignore[arg-type]
    meta = probe(path)
    assert meta["format"]["format_name"] == ffformat
    assert meta["streams"][0]["codec_name"] == ffcodec
    assert int(meta["streams"][0]["channels"]) == 2
    # Encoder padding (mp3 frames, opus pre-skip) may add a few tens of milliseconds in ffprobe's view.
    assert float(meta["format"]["duration"]) == pytest.approx(1.0, abs=0.06)
    tags = all_tags(meta)
    assert tags["title"] == TAGS["title"]
    assert tags["comment"] == TAGS["comment"]
    assert (info.sample_rate, info.channels) == (rate, 2)
    assert info.duration_s == pytest.approx(1.0, abs=0.001)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert os.listdir(tmp_path) == [path.name]
    back, back_rate = read_audio(path)
    assert back_rate == rate and back.shape[0] == 2
    assert info.decoded is not None and info.decoded.shape == back.shape


def test_software_and_date_tags_where_the_container_keeps_them(tmp_path: Path) -> None:
    for fmt in ("wav", "flac", "ogg"):
        tags = all_tags(probe(write_audio(tmp_path / f"t.{fmt}", tone(1), SR, fmt, tags=TAGS).path))  # type: ignore[arg-type]
        assert "dgx-music 9.9" in (tags.get("software") or tags.get("encoder", "")), (fmt, tags)
        assert tags["date"] == "2026-12-01", (fmt, tags)


def test_quality_sets_the_size_of_a_preview(tmp_path: Path) -> None:
    for fmt, codec in (("mp3", None), ("ogg", "vorbis"), ("ogg", "opus")):
        low = write_audio(tmp_path / f"low-{codec}.{fmt}", tone(2, 2.0), SR, fmt, codec=codec, quality=0.1)  # type: ignore[arg-type]
        high = write_audio(tmp_path / f"high-{codec}.{fmt}", tone(2, 2.0), SR, fmt, codec=codec, quality=0.9)  # type: ignore[arg-type]
        assert high.bytes > low.bytes, (fmt, codec, low.bytes, high.bytes)
        assert (low.quality, high.quality) == (0.1, 0.9)


def test_lossy_previews_stay_close_to_the_source(tmp_path: Path) -> None:
    audio = tone(1)
    info = write_audio(tmp_path / "v.ogg", audio, SR, "ogg", quality=0.8)
    assert info.decoded is not None
    rms_in = float(np.sqrt(np.mean(audio**2)))
    rms_out = float(np.sqrt(np.mean(info.decoded**2)))
    assert rms_out == pytest.approx(rms_in, rel=0.05)


def test_codec_and_quality_are_refused_where_they_do_not_apply(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ogg only"):
        write_audio(tmp_path / "x.mp3", tone(1), SR, "mp3", codec="opus")
    with pytest.raises(ValueError, match="mp3 and ogg"):
        write_audio(tmp_path / "x.wav", tone(1), SR, "wav", quality=0.5)
    with pytest.raises(ValueError, match="unknown tag"):
        write_audio(tmp_path / "x.wav", tone(1), SR, "wav", tags={"colour": "blue"})
    assert os.listdir(tmp_path) == []
