"""Pydantic models of a job file: one job, or a batch of jobs with shared defaults.

The field descriptions are the user documentation: the README's job table and the
JSON Schema (editor completion) are both rendered from them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from jobspec.names import ID_PATTERN

DEFAULT_MAX_DURATION = 300.0
MAX_BATCH_JOBS = 32
SEED_MAX = 2**63 - 1

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ID_RE = re.compile(ID_PATTERN[1:-1])
_MODEL_RE = re.compile(MODEL_NAME_PATTERN[1:-1])


def _check_duration_limit(value: float, info: ValidationInfo) -> float:
    # The limit is the daemon's `max_duration`, so it comes from the validation context.
    limit = DEFAULT_MAX_DURATION
    if info.context and info.context.get("max_duration") is not None:
        limit = float(info.context["max_duration"])
    if value > limit:
        raise PydanticCustomError(
            "duration_too_long",
            "duration {duration} s is longer than this daemon's limit of {limit} s",
            {"duration": _num(value), "limit": _num(limit)},
        )
    return value


def _check_id(value: str) -> str:
    # fullmatch, not the pattern alone: `$` in Python accepts a trailing newline.
    if not _ID_RE.fullmatch(value):
        raise PydanticCustomError(
            "job_id",
            "'{value}' is not a valid job id: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 128 characters",
            {"value": value},
        )
    if ".." in value:
        raise PydanticCustomError("job_id", "'{value}' is not a valid job id: '..' is not allowed", {"value": value})
    return value


def _check_model_name(value: str) -> str:
    if not _MODEL_RE.fullmatch(value):
        raise PydanticCustomError(
            "model_name",
            "'{value}' is not a model name: use a name from the daemon's `models:` config "
            "(letters, digits, '.', '_', '-'), never a path",
            {"value": value},
        )
    return value


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=500, strict=True)]
Duration = Annotated[
    float, Field(strict=True, gt=0, allow_inf_nan=False), AfterValidator(_check_duration_limit)
]
JobId = Annotated[str, Field(strict=True, pattern=ID_PATTERN), AfterValidator(_check_id)]
ModelName = Annotated[str, Field(strict=True, pattern=MODEL_NAME_PATTERN), AfterValidator(_check_model_name)]
Seed = Annotated[int, Field(strict=True, ge=0, le=SEED_MAX)]
Count = Annotated[int, Field(strict=True, ge=1, le=8)]
Priority = Literal["high", "normal", "low"]


class Sampling(BaseModel):
    """How tokens are drawn. Defaults follow MusicGen/audiocraft."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: Annotated[float, Field(strict=True, ge=0.1, le=2.0, allow_inf_nan=False)] = Field(
        default=1.0,
        description="Sampling temperature, 0.1..2.0: lower is safer and more repetitive, higher is wilder.",
    )
    top_k: Annotated[int, Field(strict=True, ge=0, le=500)] = Field(
        default=250, description="Sample only from the k most likely tokens, 0..500; 0 turns top-k off."
    )
    top_p: Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)] = Field(
        default=0.0,
        description="Nucleus sampling threshold, 0..1; 0 turns it off (then top_k applies).",
    )
    cfg_coef: Annotated[float, Field(strict=True, ge=1.0, le=10.0, allow_inf_nan=False)] = Field(
        default=3.0,
        description="Classifier-free guidance, 1..10: how closely the music follows the prompt.",
    )
    greedy: bool = Field(
        default=False,
        strict=True,
        description="true: always take the most likely token (no sampling; temperature, top_k, top_p unused).",
    )


class Output(BaseModel):
    """The audio file written for each variation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["wav", "flac"] = Field(default="wav", description="Audio container: wav or flac.")
    subtype: Literal["PCM_16", "PCM_24", "FLOAT"] = Field(
        default="PCM_16",
        description="Sample format: PCM_16, PCM_24, or FLOAT (32-bit float, wav only).",
    )
    loudness_lufs: Annotated[float, Field(strict=True, ge=-70.0, le=-5.0, allow_inf_nan=False)] | None = Field(
        default=-16.0,
        description="Integrated loudness target (EBU R128), -70..-5 LUFS; null leaves the level untouched.",
    )
    true_peak_dbtp: Annotated[float, Field(strict=True, ge=-9.0, le=0.0, allow_inf_nan=False)] | None = Field(
        default=-1.0,
        description="True-peak ceiling, -9..0 dBTP; null applies no limiter.",
    )

    @field_validator("subtype")
    @classmethod
    def _subtype_fits_format(cls, value: str, info: ValidationInfo) -> str:
        if value == "FLOAT" and info.data.get("format") == "flac":
            raise PydanticCustomError(
                "subtype_not_allowed", "subtype FLOAT is not available for flac (FLAC stores integers only)"
            )
        return value


class JobSpec(BaseModel):
    """One job as written in a file (`id` may be left out: it defaults to the file's name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Prompt = Field(
        description="What to play, 3..500 characters (surrounding spaces are trimmed).",
    )
    duration: Duration = Field(
        default=16.0,
        # The default must meet the daemon's limit too (a daemon may set max_duration below 16).
        validate_default=True,
        description="Length in seconds, > 0 and at most the daemon's max_duration (300 by default); "
        "beyond the model's 30 s window the piece is continued window by window.",
    )
    model: ModelName | None = Field(
        default=None,
        description="A model name from the daemon's `models:` config; null uses its default_model.",
    )
    seed: Seed | None = Field(
        default=None,
        description="Random seed, 0..2^63-1, for repeatable results; null picks one "
        "(the effective seed is always recorded in the result).",
    )
    count: Count = Field(default=1, description="Number of variations of this prompt, 1..8 (seed, seed+1, ...).")
    priority: Priority = Field(default="normal", description="Queue priority: high, normal or low.")
    sampling: Sampling = Field(default_factory=Sampling, description="Sampling settings (see sampling.*).")
    output: Output = Field(default_factory=Output, description="Audio file settings (see output.*).")
    id: JobId | None = Field(
        default=None,
        description="Job id, used for the output file names: letters, digits, '.', '_', '-', up to 128 "
        "characters. Default: the file's name without .yaml (`<name>.1`, `<name>.2`, ... in a batch).",
    )


class Job(JobSpec):
    """A validated job with its id resolved: what the daemon queues and runs."""

    id: JobId = Field(description=JobSpec.model_fields["id"].description)


def _partial_job_fields() -> dict[str, Any]:
    # Defaults take any job field except `id` (ids must differ between jobs), each optional.
    fields: dict[str, Any] = {}
    for name, info in JobSpec.model_fields.items():
        if name == "id":
            continue
        # The annotation stays as it is (no `| None` added): an explicit `count: null` in
        # defaults is an error, while a key left out is simply not merged.
        fields[name] = (info.rebuild_annotation(), Field(default=None, description=info.description))
    return fields


JobDefaults = create_model(  # type: ignore[call-overload]
    "JobDefaults",
    __config__=ConfigDict(extra="forbid", frozen=True),
    __doc__="Values merged under every job of a batch; a job's own values win (sampling and output key by key).",
    **_partial_job_fields(),
)


def merge_defaults(defaults: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """A job's raw mapping with the batch defaults under it; `sampling`/`output` merge key by key."""
    merged = dict(defaults)
    for key, value in job.items():
        if key in ("sampling", "output") and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


class BatchFile(BaseModel):
    """A file holding several jobs, validated as a whole."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: JobDefaults | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Values merged under every job; a job's own values win (sampling and output key by key).",
    )
    jobs: Annotated[list[JobSpec], Field(min_length=1, max_length=MAX_BATCH_JOBS)] = Field(
        description=f"The jobs, 1..{MAX_BATCH_JOBS}. Ids default to `<file name>.1`, `<file name>.2`, ...",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaults, jobs = data.get("defaults"), data.get("jobs")
        if isinstance(defaults, dict) and isinstance(jobs, list):
            data = {**data, "jobs": [merge_defaults(defaults, j) if isinstance(j, dict) else j for j in jobs]}
        return data
