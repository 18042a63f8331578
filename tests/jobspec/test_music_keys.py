"""bpm, key and time_signature: accepted for every job, normalised, refused with field, line and hint."""

from __future__ import annotations

import pytest

from daemon.core.messages import GenerationRequest
from daemon.engine.plan import model_text
from jobspec import JobSpecError, load_job_bytes
from jobspec.music import bar_beats, normalize_key, parse_key


def one(text: str):  # noqa: ANN201 - a Job
    (job,) = load_job_bytes(text.encode(), "job.yaml")
    return job


@pytest.mark.parametrize(
    ("written", "recorded"),
    [
        ("C major", "C major"),
        ("a minor", "A minor"),
        ("F# minor", "F# minor"),
        ("Gb minor", "F# minor"),
        ("A# minor", "Bb minor"),
        ("Bb min", "Bb minor"),
        ("C# maj", "Db major"),
        ("E♭ Major", "Eb major"),
        ("Cb major", "B major"),
        ("B# minor", "C minor"),
        ("  d   MINOR ", "D minor"),
    ],
)
def test_keys_are_normalised_enharmonics_one_way(written: str, recorded: str) -> None:
    job = one(f'prompt: warm piano\nkey: "{written}"\n')
    assert job.key == recorded
    assert normalize_key(recorded) == recorded  # the recorded name reads back as itself


def test_every_spelling_of_a_pitch_class_names_the_same_key() -> None:
    names = {normalize_key(f"{t} {m}") for t in ("C#", "Db") for m in ("minor",)}
    assert names == {"C# minor"}
    assert parse_key("Db major") == parse_key("C# major") == (1, "major")


def test_music_keys_are_kept_in_the_request_and_defaults_merge_them() -> None:
    job = one("prompt: warm piano\nbpm: 120\nkey: A minor\ntime_signature: 6/8\n")
    assert (job.bpm, job.key, job.time_signature) == (120, "A minor", "6/8")
    jobs = load_job_bytes(
        b"defaults: {bpm: 90, key: E minor}\n"
        b"jobs:\n  - prompt: one loop\n  - prompt: two loop\n    bpm: 100\n",
        "b.yaml",
    )
    assert [(j.bpm, j.key) for j in jobs] == [(90, "E minor"), (100, "E minor")]


@pytest.mark.parametrize(
    ("line", "loc", "fragment", "hint"),
    [
        ("bpm: 29", "bpm", "greater than or equal to 30", "30..300"),
        ("bpm: 301", "bpm", "less than or equal to 300", "30..300"),
        ("bpm: 120.5", "bpm", "whole number", "30..300"),
        ('bpm: "120"', "bpm", "string", "without quotes"),
        ("key: H minor", "key", "is not a key", "A minor"),
        ("key: C", "key", "is not a key", "A minor"),
        ("key: C dorian", "key", "is not a key", "A minor"),
        ("key: 5", "key", "expected text", "quotes"),
        ("time_signature: 4/5", "time_signature", "not a time signature", "6/8"),
        ("time_signature: 17/4", "time_signature", "not a time signature", "6/8"),
        ("time_signature: 4", "time_signature", "expected text", "quotes"),
        ("loop: {bars: 2}", "loop", "needs the tempo", "bpm"),
        ("bpm: 120\nduration: 3\nloop: {bars: 2}", "duration", "shorter than the loop", "at least 4 s"),
        ("bpm: 120\nloop: {bars: 65}", "loop.bars", "less than or equal to 64", "1 to 64"),
        ("candidates: 3\ncount: 2", "candidates", "cannot both be above 1", "best of several"),
        ("candidates: 9", "candidates", "less than or equal to 8", "1 to 8"),
        ("keep_candidates: true", "keep_candidates", "needs candidates above 1", "2..8"),
    ],
)
def test_bad_music_keys_name_field_line_and_hint(line: str, loc: str, fragment: str, hint: str) -> None:
    with pytest.raises(JobSpecError) as err:
        load_job_bytes(f"prompt: warm piano\n{line}\n".encode(), "job.yaml")
    (detail,) = err.value.details
    # The line of the key the problem is about (the job's own lines start at line 2).
    at = 2 + next(i for i, text in enumerate(line.splitlines()) if text.startswith(loc.split(".")[0]))
    assert (detail.loc, detail.line) == (loc, at)
    assert fragment in detail.msg
    assert detail.hint is not None and hint in detail.hint


def test_bar_beats_count_quarter_notes() -> None:
    assert [bar_beats(t) for t in (None, "4/4", "3/4", "6/8", "7/8", "2/2")] == [4, 4, 3, 3, 3.5, 4]


def test_musicgen_reads_the_asked_music_as_a_hint_in_its_text() -> None:
    req = GenerationRequest("warm lo-fi beat.", 8.0, bpm=90, key="A minor", time_signature="4/4")
    assert model_text(req, req.prompt) == "warm lo-fi beat. bpm: 90. key: A minor. time signature: 4/4"
    plain = GenerationRequest("warm lo-fi beat", 8.0)
    assert model_text(plain, plain.prompt) == "warm lo-fi beat"


def test_a_loop_without_duration_gets_room_to_choose_its_cut() -> None:
    job = one("prompt: a loop here\nbpm: 120\nloop: {bars: 2}\n")  # 2 bars of 4/4 at 120: 4 s
    assert (job.duration, job.loop.bars, job.candidates) == (6.0, 2, 1)
    waltz = one("prompt: a loop here\nbpm: 90\ntime_signature: 3/4\nloop: {bars: 4}\n")  # 8 s
    assert waltz.duration == 12.0
