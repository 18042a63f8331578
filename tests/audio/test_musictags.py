"""Tempo, key and lyrics in the file's own fields, read back by ffprobe (FLAC and Ogg Vorbis
comments, mp3 ID3 frames) and the WAV `acid` chunk by a RIFF walk here; written into a whole file in
memory and into one streamed from a clip on disk alike, and libsndfile still reads every file."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from daemon.audio.encode import read_audio, write_audio
from daemon.audio.musictags import MusicTags, SongText
from daemon.core.pcm import Pcm

TAGS = MusicTags(bpm=124, key="F# minor", beats=16, time_signature="4/4", loop=True)
SONG = SongText("[verse]\nGrüße aus Köln\n夜の歌\n\n[chorus]\nla la la", "de")
needs_ffprobe = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffprobe")


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


def _probe(path: Path) -> dict[str, str]:
    """Every tag ffprobe finds, the container's and the audio stream's (Ogg keeps comments there)."""
    cmd = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return {**out["format"].get("tags", {}), **out["streams"][0].get("tags", {})}


@pytest.mark.parametrize("streamed", [False, True], ids=["array", "clip"])
def test_wav_gets_an_acid_chunk_with_tempo_beats_metre_and_root(tmp_path: Path, streamed: bool) -> None:
    audio = Pcm.from_array(_audio()) if streamed else _audio()
    info = write_audio(tmp_path / "loop.wav", audio, 16000, "wav", "PCM_16", music=TAGS, song=SONG)
    acid = _chunks((tmp_path / "loop.wav").read_bytes())[b"acid"]
    flags, root, _, _, beats, denom, numer, tempo = struct.unpack("<IHHfIHHf", acid)
    assert (flags & 0x04, flags & 0x02, root % 12, beats, numer, denom, tempo) == (4, 2, 6, 16, 4, 4, 124.0)
    audio, rate = read_audio(tmp_path / "loop.wav")
    assert rate == 16000 and audio.shape == (2, 16000) and info.frames == 16000


@needs_ffprobe
@pytest.mark.parametrize("streamed", [False, True], ids=["array", "clip"])
@pytest.mark.parametrize(
    ("format", "codec"), [("flac", None), ("ogg", "vorbis"), ("ogg", "opus")], ids=["flac", "vorbis", "opus"]
)
def test_flac_and_ogg_get_bpm_key_and_lyrics_comments(
    tmp_path: Path, format: str, codec: str | None, streamed: bool
) -> None:
    path = tmp_path / f"song.{format}"
    audio = Pcm.from_array(_audio()) if streamed else _audio()
    info = write_audio(
        path,
        audio,
        16000,
        format,
        "PCM_16",
        codec=codec,
        tags={"title": "a song"},
        music=TAGS,
        song=SONG,  # type: ignore[arg-type]
    )
    tags = {k.upper(): v for k, v in _probe(path).items()}
    assert (tags["BPM"], tags["INITIALKEY"], tags["TITLE"]) == ("124", "F# minor", "a song")
    assert (tags["LYRICS"], tags["LANGUAGE"]) == (SONG.lyrics, "de")
    back, rate = read_audio(path)
    assert back.shape[0] == 2 and abs(back.shape[1] / rate - 1.0) < 0.01
    assert info.bytes == path.stat().st_size  # the sidecar's size and hash are of the tagged file


@needs_ffprobe
@pytest.mark.parametrize("streamed", [False, True], ids=["array", "clip"])
def test_mp3_gets_id3_tempo_key_and_unsynchronised_lyrics(tmp_path: Path, streamed: bool) -> None:
    path = tmp_path / "song.mp3"
    audio = Pcm.from_array(_audio()) if streamed else _audio()
    write_audio(path, audio, 16000, "mp3", "PCM_16", tags={"title": "a song"}, music=TAGS, song=SONG)
    tags = _probe(path)
    # ffmpeg names a USLT frame by its three-letter language: the job's "de" is "deu".
    assert (tags["TBPM"], tags["TKEY"], tags["title"]) == ("124", "F#m", "a song")
    assert tags["lyrics-deu"] == SONG.lyrics
    back, rate = read_audio(path)
    assert back.shape[0] == 2 and abs(back.shape[1] / rate - 1.0) < 0.01


@needs_ffprobe
@pytest.mark.parametrize(
    ("language", "uslt"),
    [("pt-br", "por"), ("zh", "zho"), ("yue", "yue"), ("xx", "XXX"), (None, "XXX")],
)
def test_mp3_lyrics_language_is_three_letters(tmp_path: Path, language: str | None, uslt: str) -> None:
    write_audio(tmp_path / "b.mp3", _audio(), 16000, "mp3", "PCM_16", song=SongText("la", language))
    assert _probe(tmp_path / "b.mp3")[f"lyrics-{uslt}"] == "la"


def test_files_without_music_or_lyrics_get_no_fields(tmp_path: Path) -> None:
    plain = write_audio(tmp_path / "a.wav", _audio(), 16000, "wav", "PCM_16")
    assert b"acid" not in _chunks((tmp_path / "a.wav").read_bytes())
    assert plain.frames == 16000
    write_audio(tmp_path / "a.flac", Pcm.from_array(_audio()), 16000, "flac", "PCM_16", tags={"title": "x"})
    data = (tmp_path / "a.flac").read_bytes()
    assert b"LYRICS" not in data and b"BPM" not in data
