"""JSON Schema, sidecar models, error formatting and the README job table."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pydantic
import pytest

from jobspec import (
    SCHEMA_VERSION,
    ErrorDetail,
    ErrorInfo,
    ErrorSidecar,
    HostInfo,
    JobSpec,
    JobSpecError,
    ModelInfo,
    Output,
    OutputInfo,
    ResultSidecar,
    Sampling,
    Timings,
    job_file_schema,
    load_job_bytes,
    result_schema,
)
from jobspec.docs import job_table_markdown
from jobspec.models import Section
from jobspec.schema import render

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def jsonschema():  # type: ignore[no-untyped-def]
    # A validator independent of pydantic; `jsonschema` is in the test extra.
    return pytest.importorskip("jsonschema")


def test_job_schema_file_matches_the_models() -> None:
    kept = (ROOT / "jobspec" / "examples" / "job.schema.json").read_text(encoding="utf-8")
    assert kept == render(job_file_schema()), (
        "job.schema.json is out of date: run `python -m jobspec.schema > jobspec/examples/job.schema.json`"
    )


def test_schemas_are_valid_draft_2020_12(jsonschema) -> None:  # type: ignore[no-untyped-def]
    jsonschema.Draft202012Validator.check_schema(job_file_schema())
    jsonschema.Draft202012Validator.check_schema(result_schema())


def test_job_schema_accepts_single_and_batch_and_refuses_typos(jsonschema) -> None:  # type: ignore[no-untyped-def]
    validator = jsonschema.Draft202012Validator(job_file_schema())
    assert validator.is_valid({"prompt": "warm piano", "sampling": {"top_k": 5}})
    assert validator.is_valid({"defaults": {"duration": 8}, "jobs": [{"prompt": "a b c"}]})
    assert not validator.is_valid({"promt": "warm piano"})
    assert not validator.is_valid({"prompt": "warm piano", "sampling": {"temprature": 1}})
    assert not validator.is_valid({"jobs": []})
    assert not validator.is_valid({"prompt": "warm piano", "count": 9})


def test_every_job_field_is_described_in_the_schema() -> None:
    defs = job_file_schema()["$defs"]
    for name in ("JobSpec", "Sampling", "Output", "BatchFile", "JobDefaults"):
        for field, spec in defs[name]["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"


def _result() -> ResultSidecar:
    (job,) = load_job_bytes(b"prompt: warm piano\nseed: 42\ncount: 2\n", "loop.yaml")
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    output = dict(
        format="wav",
        subtype="PCM_16",
        sample_rate=32000,
        channels=1,
        frames=512000,
        duration_s=16.0,
        bytes=1024044,
        sha256="0" * 64,
        integrated_lufs=-16.0,
        true_peak_dbtp=-1.2,
        gain_db=3.5,
    )
    return ResultSidecar(
        job_id="loop",
        source_file="loop.yaml",
        submitted=now,
        started=now,
        finished=now,
        timings=Timings(queue_s=0.1, model_load_s=0.0, generate_s=8.0, postprocess_s=0.2, total_s=8.3),
        rtf=0.5,
        request=job,
        model=ModelInfo(
            name="small",
            source="facebook/musicgen-small",
            revision="abc123",
            dtype="float32",
            device="cpu",
            parameters=590_000_000,
        ),
        outputs=[
            OutputInfo(path="loop-v1.wav", variation=1, seed=42, **output),
            OutputInfo(path="loop-v2.wav", variation=2, seed=43, **output),
        ],
        peak_memory_bytes=123,
        host=HostInfo(hostname="dgx", gpu=None, torch="2.3", transformers="5.0", dgx_music="0.1.0"),
    )


def test_result_sidecar_round_trips_and_matches_its_schema(jsonschema) -> None:  # type: ignore[no-untyped-def]
    sidecar = _result()
    text = sidecar.model_dump_json()
    data = json.loads(text)
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["status"] == "completed"
    assert data["finished"] == "2025-01-02T03:04:05Z"
    assert data["request"]["seed"] == 42 and data["request"]["sampling"]["top_k"] == 250
    assert ResultSidecar.model_validate_json(text) == sidecar
    jsonschema.validate(data, result_schema())


def test_error_sidecar_with_details_matches_its_schema(jsonschema) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(JobSpecError) as info:
        load_job_bytes(b"prompt: warm piano\ncount: 0\n", "bad.yaml")
    error = info.value
    sidecar = ErrorSidecar(
        job_id="bad",
        source_file="bad.yaml",
        error=ErrorInfo(
            type=error.error_type, message=error.message, details=error.details, hint="fix count"
        ),
        attempts=1,
    )
    data = json.loads(sidecar.model_dump_json())
    assert data["status"] == "failed"
    assert data["error"]["type"] == "invalid_job"
    assert data["error"]["details"][0]["loc"] == "count" and data["error"]["details"][0]["line"] == 2
    jsonschema.validate(data, result_schema())


def test_error_sidecar_refuses_unknown_error_types() -> None:
    with pytest.raises(pydantic.ValidationError):
        ErrorInfo(type="kaboom", message="x")  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.wav", "a/../../b.wav", "a\\b.wav", ""])
def test_output_paths_must_stay_inside_outbox(path: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        OutputInfo(
            path=path,
            format="wav",
            subtype="PCM_16",
            sample_rate=1,
            channels=1,
            frames=0,
            duration_s=0,
            bytes=0,
            sha256="0" * 64,
        )


def test_sidecar_timestamps_must_carry_a_timezone() -> None:
    data = json.loads(_result().model_dump_json())
    data["started"] = "2025-01-02T03:04:05"
    with pytest.raises(pydantic.ValidationError):
        ResultSidecar.model_validate(data)


def test_job_spec_error_text_and_summary() -> None:
    details = [
        ErrorDetail(loc="count", line=2, msg="too big", hint="use 1..8"),
        ErrorDetail(loc="", line=None, msg="x"),
    ]
    error = JobSpecError(details, "a.yaml")
    assert str(error).splitlines() == [
        "a.yaml: 2 problems",
        "  a.yaml:2: count: too big (use 1..8)",
        "  a.yaml: x",
    ]
    assert error.message == "a.yaml:2: count: too big (use 1..8) (and 1 more)"
    with pytest.raises(ValueError):
        JobSpecError([], "a.yaml")


def test_job_table_lists_every_key_with_its_default_and_description() -> None:
    table = job_table_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    keys = [row.split("`")[1] for row in rows]
    expected = (
        list(JobSpec.model_fields)
        + [f"sections[].{k}" for k in Section.model_fields]
        + [f"sampling.{k}" for k in Sampling.model_fields]
        + [f"output.{k}" for k in Output.model_fields]
        + ["loop.bars"]
        + ["defaults", "jobs"]
    )
    assert keys == expected
    assert "| `sampling.top_k` | 250 |" in table
    assert "| `prompt` | required (or `sections`) |" in table
    assert "| `sections[].duration` | required |" in table
    assert "| `output.loudness_lufs` | -16.0 |" in table
    assert Sampling.model_fields["cfg_coef"].description in table


def test_schema_takes_sections_instead_of_prompt_and_never_both() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = job_file_schema()
    section = [{"prompt": "soft intro", "duration": 4}]
    jsonschema.validate({"sections": section}, schema)
    jsonschema.validate({"prompt": "warm piano", "continue_from": "library/riff.wav"}, schema)
    for bad in (
        {"sections": section, "prompt": "x y z"},
        {"sections": section, "duration": 4},
        {"seed": 1},
        {"prompt": "warm piano", "melody": "../riff.wav"},
        {"prompt": "warm piano", "melody": "/x.wav"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
