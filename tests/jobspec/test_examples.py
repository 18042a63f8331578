"""Every job in examples/ validates, follows the conventions, and matches job.schema.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobspec import load_job_file
from jobspec.yamlsafe import load_yaml_bytes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".yaml", ".yml"))


def test_there_are_at_least_six_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert len(EXAMPLES) >= 6
    assert {
        "lofi-loop.yaml",
        "seeded.yaml",
        "variations.yaml",
        "long-piece.yaml",
        "flac-master.yaml",
        "batch.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates(path: Path) -> None:
    jobs = load_job_file(path)
    assert jobs
    for job in jobs:
        assert job.model is None, "examples must run on any configured default model"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_starts_with_the_schema_line(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=./job.schema.json"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_matches_the_published_schema(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "jobspec" / "examples" / "job.schema.json").read_text(encoding="utf-8"))
    data, _ = load_yaml_bytes(path.read_bytes())
    jsonschema.validate(data, schema)


def test_examples_show_what_they_promise() -> None:
    by_name = {p.name: load_job_file(p) for p in EXAMPLES}
    assert by_name["lofi-loop.yaml"][0].duration == 8.0
    tk = by_name["tempo-key.yaml"][0]
    assert (tk.bpm, tk.key, tk.time_signature) == (92, "D minor", "4/4")
    loop = by_name["drum-loop.yaml"][0]
    assert (loop.bpm, loop.loop.bars if loop.loop else None) == (124, 4)
    assert by_name["best-of.yaml"][0].candidates == 4
    assert by_name["seeded.yaml"][0].seed is not None
    assert by_name["variations.yaml"][0].count == 4
    assert by_name["long-piece.yaml"][0].duration == 60.0
    flac = by_name["flac-master.yaml"][0].output
    assert (flac.format, flac.subtype, flac.loudness_lufs) == ("flac", "PCM_24", -14.0)
    batch = by_name["batch.yaml"]
    assert len(batch) == 3 and [j.id for j in batch][:2] == ["batch.1", "batch.2"]
    assert b"defaults:" in (ROOT / "examples" / "batch.yaml").read_bytes()


def test_examples_show_the_music_from_music_features() -> None:
    by_name = {p.name: load_job_file(p) for p in EXAMPLES}
    riff = by_name["continue-riff.yaml"][0]
    assert riff.continue_from == "library/riff.wav" and riff.duration == 20.0
    assert by_name["follow-melody.yaml"][0].melody == "library/hummed-tune.wav"
    sections = by_name["sections.yaml"][0]
    assert sections.sections is not None and len(sections.sections) == 3 and sections.duration == 50.0
    previews = by_name["previews.yaml"]
    assert [(j.output.format, j.output.codec) for j in previews] == [("mp3", None), ("ogg", "opus")]
