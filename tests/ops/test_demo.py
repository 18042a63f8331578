"""The demo's preparation of the examples: capped lengths, melody jobs to the melody model, the
reference audio the examples name written into library/."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf
import yaml

from daemon.ops.demo import MELODY_MODEL, cap_durations, write_library
from jobspec import load_job_bytes

REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "jobspec" / "examples"


def capped(name: str) -> dict:
    return cap_durations(yaml.safe_load((REPO_EXAMPLES / name).read_text()), 2.0, 4.0)


def test_sections_keep_their_structure_within_the_long_cap() -> None:
    doc = capped("sections.yaml")
    assert "duration" not in doc  # sections stand for it
    assert sum(s["duration"] for s in doc["sections"]) <= 4.0 and len(doc["sections"]) == 3
    [job] = load_job_bytes(yaml.safe_dump(doc).encode(), "sections.yaml")
    assert job.duration <= 4.0


def test_melody_jobs_go_to_the_melody_model_and_references_exist(tmp_path: Path) -> None:
    assert capped("follow-melody.yaml")["model"] == MELODY_MODEL
    assert "model" not in capped("continue-riff.yaml")
    write_library(tmp_path / "library")
    for name in ("riff.wav", "hummed-tune.wav"):
        info = sf.info(str(tmp_path / "library" / name))
        assert info.samplerate == 32000 and info.duration == 3.0


def test_songs_with_lyrics_go_to_the_acestep_model() -> None:
    from daemon.ops.demo import SONG_MODEL

    doc = capped("song-lyrics.yaml")
    assert doc["model"] == SONG_MODEL and doc["duration"] <= 4.0 and "[chorus]" in doc["lyrics"]
    assert "model" not in capped("tempo-key.yaml")  # bpm and key belong to every family


def test_edits_go_to_the_acestep_model_on_a_short_song(tmp_path: Path) -> None:
    from daemon.ops.demo import DEMO_SONG_S, SONG_MODEL

    repaint = capped("repaint-bridge.yaml")
    assert repaint["model"] == SONG_MODEL and repaint["repaint"]["end"] <= DEMO_SONG_S
    assert capped("stems.yaml")["model"] == SONG_MODEL
    write_library(tmp_path)
    info = sf.info(str(tmp_path / "song.wav"))
    assert info.channels == 2 and abs(info.duration - DEMO_SONG_S) < 0.01
