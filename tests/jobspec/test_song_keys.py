"""lyrics, language, steps and guidance: accepted as written, refused with field, line and hint."""

from __future__ import annotations

import pytest

from jobspec import JobSpecError, load_job_bytes
from jobspec.song import LYRICS_MAX_CHARS, section_tags

SONG = """prompt: upbeat indie pop
duration: 20
lyrics: |
  [verse]
  Morning light on the harbour wall
  [chorus 2]
  Hold on
language: pt-br
steps: 8
guidance: 5.5
"""


def test_a_song_job_keeps_its_lyrics_as_written() -> None:
    (job,) = load_job_bytes(SONG.encode(), "song.yaml")
    assert job.lyrics == "[verse]\nMorning light on the harbour wall\n[chorus 2]\nHold on\n"
    assert (job.language, job.steps, job.guidance) == ("pt-br", 8, 5.5)
    assert section_tags(job.lyrics) == ["verse", "chorus 2"]


@pytest.mark.parametrize(
    ("text", "field", "line", "words"),
    [
        ("prompt: pop\nlyrics: |\n  [verse\n  la la\n", "lyrics", 2, "line 1 of the lyrics"),
        (f"prompt: pop\nlyrics: '{'a' * (LYRICS_MAX_CHARS + 1)}'\n", "lyrics", 2, "at most 4096"),
        ("prompt: pop\nlyrics: ''\n", "lyrics", 2, "at least 1"),
        ("prompt: pop\nlanguage: English\n", "language", 2, "pattern"),
        ("prompt: pop\nsteps: 0\n", "steps", 2, "greater than or equal to 1"),
        ("prompt: pop\nsteps: 8.5\n", "steps", 2, "whole number"),
        ("prompt: pop\nguidance: 0.5\n", "guidance", 2, "greater than or equal to 1"),
    ],
)
def test_bad_song_keys_name_field_line_and_hint(text: str, field: str, line: int, words: str) -> None:
    with pytest.raises(JobSpecError) as info:
        load_job_bytes(text.encode(), "song.yaml")
    (detail,) = info.value.details
    assert detail.loc == field and detail.line == line
    assert words in detail.msg
    assert detail.hint
