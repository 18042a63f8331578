"""Tempo and key in the file's own fields: FLAC Vorbis comments read back by ffprobe, the WAV
`acid` chunk read back by a RIFF walk here; libsndfile still reads both files as before."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from daemon.audio.encode import read_audio, write_audio
from daemon.audio.musictags import MusicTags

TAGS = MusicTags(bpm=124, key="F# minor", beats=16, time_signature="4/4", loop=True)


def _audio() -> np.ndarray:
    t = np.arange(16000) / 16000
    return np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)


def _chunks(data: bytes) -> dict[bytes, bytes]:
    assert data[:4] == b"RIFF" and struct.unpack("<I", data[4:8])[0] == len(data) - 8
    pos, found = 12, {}
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        found[cid] = data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    return found


def test_wav_gets_an_acid_chunk_with_tempo_beats_metre_and_root(tmp_path: Path) -> None:
    info = write_audio(tmp_path / "loop.wav", _audio(), 16000, "wav", "PCM_16", music=TAGS)
    acid = _chunks((tmp_path / "loop.wav").read_bytes())[b"acid"]
    flags, root, _, _, beats, denom, numer, tempo = struct.unpack("<IHHfIHHf", acid)
    assert (flags & 0x04, flags & 0x02, root % 12, beats, numer, denom, tempo) == (4, 2, 6, 16, 4, 4, 124.0)
    audio, rate = read_audio(tmp_path / "loop.wav")
    assert rate == 16000 and audio.shape == (2, 16000) and info.frames == 16000


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffprobe")
def test_flac_gets_bpm_and_initialkey_comments(tmp_path: Path) -> None:
    write_audio(
        tmp_path / "loop.flac", _audio(), 16000, "flac", "PCM_16", tags={"title": "a loop"}, music=TAGS
    )
    cmd = ["ffprobe", "-v", "error", "-show_format", "-of", "json", str(tmp_path / "loop.flac")]
    tags = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)["format"][
        "tags"
    ]
    assert (tags["BPM"], tags["INITIALKEY"], tags["title"]) == ("124", "F# minor", "a loop")
    assert read_audio(tmp_path / "loop.flac")[0].shape == (2, 16000)


def test_lossy_files_and_no_tags_are_left_alone(tmp_path: Path) -> None:
    plain = write_audio(tmp_path / "a.wav", _audio(), 16000, "wav", "PCM_16")
    assert b"acid" not in _chunks((tmp_path / "a.wav").read_bytes())
    assert plain.frames == 16000
    write_audio(tmp_path / "a.ogg", _audio(), 16000, "ogg", "PCM_16", music=TAGS)
    assert read_audio(tmp_path / "a.ogg")[0].shape[0] == 2
