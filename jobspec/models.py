"""Pydantic models of a job file: one job, or a batch of jobs with shared defaults.

The field descriptions are the user documentation: the README's job table and the
JSON Schema (editor completion) are both rendered from them.
"""

from __future__ import annotations

import math
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

from jobspec import edit, music, song
from jobspec.edit import EDIT_KEYS, Complete, Cover, Extract, Lego, Repaint
from jobspec.music import Bpm, Loop, MusicalKey, TimeSignature
from jobspec.names import ID_PATTERN, REFERENCE_PATTERN, check_reference
from jobspec.output import LOSSY_FORMATS, Output
from jobspec.song import Guidance, Language, Lyrics, Steps

DEFAULT_MAX_DURATION = 300.0
MAX_BATCH_JOBS = 32
SEED_MAX = 2**63 - 1

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ID_RE = re.compile(ID_PATTERN[1:-1])
_MODEL_RE = re.compile(MODEL_NAME_PATTERN[1:-1])


def _duration_limit(info: ValidationInfo) -> float:
    # The limit is the daemon's `max_duration`, so it comes from the validation context.
    context = info.context or {}
    return DEFAULT_MAX_DURATION if context.get("max_duration") is None else float(context["max_duration"])


def _check_duration_limit(value: float, info: ValidationInfo) -> float:
    limit = _duration_limit(info)
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
        raise PydanticCustomError(
            "job_id", "'{value}' is not a valid job id: '..' is not allowed", {"value": value}
        )
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
# The pattern goes to the JSON Schema only, so that the checker can say which rule a path breaks.
Reference = Annotated[
    str, Field(strict=True, json_schema_extra={"pattern": REFERENCE_PATTERN}), AfterValidator(check_reference)
]


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
        description="true: always take the most likely token "
        "(no sampling; temperature, top_k, top_p unused).",
    )


MAX_SECTIONS = 16


def _check_sections_total(value: list["Section"] | None, info: ValidationInfo) -> list["Section"] | None:
    if value is None:
        return value
    limit = _duration_limit(info)
    total = sum(s.duration for s in value)
    if total > limit:
        raise PydanticCustomError(
            "duration_too_long",
            "the sections add up to {duration} s, longer than this daemon's limit of {limit} s",
            {"duration": _num(total), "limit": _num(limit)},
        )
    return value


class Section(BaseModel):
    """One part of a piece with a structure: its own prompt for its own seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Prompt = Field(description="What this section plays, 3..500 characters.")
    duration: Duration = Field(description="This section's length in seconds, > 0.")


def _sections_summary(sections: Any) -> tuple[str | None, float | None]:
    """The prompt and duration a sections job stands for: prompts joined, durations summed.

    None where the sections are not valid yet (their own errors are reported instead).
    """
    if not isinstance(sections, list) or not sections or not all(isinstance(s, dict) for s in sections):
        return None, None
    prompts = [s.get("prompt") for s in sections]
    durations = [s.get("duration") for s in sections]
    prompt = None
    if all(isinstance(p, str) and len(p.strip()) >= 3 for p in prompts):
        prompt = " / ".join(str(p).strip() for p in prompts)
        if len(prompt) > 500:
            prompt = prompt[:497].rstrip() + "..."
    duration = None

    def positive(d: Any) -> bool:
        return isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d) and d > 0

    if all(positive(d) for d in durations):
        duration = float(sum(durations))
    return prompt, duration


def _prompt_or_sections(schema: dict[str, Any]) -> None:
    # In the JSON Schema, `prompt` is required unless `sections` stands in for it (never both).
    required = schema.get("required", [])
    if "prompt" in required and "sections" in schema.get("properties", {}):
        required.remove("prompt")
        if not required:
            schema.pop("required")
        schema["oneOf"] = [
            {"required": ["prompt"], "not": {"required": ["sections"]}},
            {
                "required": ["sections"],
                "not": {"anyOf": [{"required": ["prompt"]}, {"required": ["duration"]}]},
            },
        ]


class JobSpec(BaseModel):
    """One job as written in a file (`id` may be left out: it defaults to the file's name)."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_prompt_or_sections)

    prompt: Prompt = Field(
        description="What to play, 3..500 characters (surrounding spaces are trimmed). "
        "Required unless `sections` is given.",
    )
    duration: Duration = Field(
        default=16.0,
        # The default must meet the daemon's limit too (a daemon may set max_duration below 16).
        validate_default=True,
        description="Length in seconds, > 0 and at most the daemon's max_duration (300 by default); "
        "beyond the model's 30 s window the piece is continued window by window. With `continue_from` "
        "the result is this long in all, the reference first.",
    )
    sections: Annotated[list[Section], Field(min_length=1, max_length=MAX_SECTIONS)] | None = Field(
        default=None,
        description="A piece with a structure, instead of `prompt` + `duration`: "
        f"a list of 1..{MAX_SECTIONS} "
        "`{prompt, duration}`; each window is conditioned on the section it falls in, the length is the sum.",
    )
    continue_from: Reference | None = Field(
        default=None,
        description="Audio to continue (any MusicGen model): `library/<file>` or `outbox/<file>` "
        "(wav, flac, ogg, mp3); the result starts with its last seconds, up to the window minus the stride.",
    )
    melody: Reference | None = Field(
        default=None,
        description="Audio whose melody (chroma) the music follows, melody models only: "
        "`library/<file>` or `outbox/<file>`.",
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
    count: Count = Field(
        default=1, description="Number of variations of this prompt, 1..8 (seed, seed+1, ...)."
    )
    priority: Priority = Field(default="normal", description="Queue priority: high, normal or low.")
    bpm: Bpm | None = music.BPM_FIELD
    key: MusicalKey | None = music.KEY_FIELD
    time_signature: TimeSignature | None = music.TIME_SIGNATURE_FIELD
    lyrics: Lyrics | None = song.LYRICS_FIELD
    language: Language | None = song.LANGUAGE_FIELD
    steps: Steps | None = song.STEPS_FIELD
    guidance: Guidance | None = song.GUIDANCE_FIELD
    adapter: ModelName | None = Field(
        default=None,
        description="ACE-Step models: a LoRA adapter the model lists under `adapters:` in the daemon's "
        "config, applied to this job only; the sidecar records it with its sha256 or revision and scale.",
    )
    adapter_scale: Annotated[float, Field(strict=True, ge=0.0, le=4.0, allow_inf_nan=False)] | None = Field(
        default=None, description="The adapter's strength, 0..4; default the config's `scale` (1)."
    )
    repaint: Repaint | None = edit.REPAINT_FIELD
    cover: Cover | None = edit.COVER_FIELD
    extract: Extract | None = edit.EXTRACT_FIELD
    lego: Lego | None = edit.LEGO_FIELD
    complete: Complete | None = edit.COMPLETE_FIELD
    candidates: music.Candidates = music.CANDIDATES_FIELD
    keep_candidates: bool = music.KEEP_CANDIDATES_FIELD
    loop: Loop | None = Field(default=None, description="Make the output a seamless loop (see loop.*).")
    sampling: Sampling = Field(default_factory=Sampling, description="Sampling settings (see sampling.*).")
    output: Output = Field(default_factory=Output, description="Audio file settings (see output.*).")
    id: JobId | None = Field(
        default=None,
        description="Job id, used for the output file names: letters, digits, '.', '_', '-', up to 128 "
        "characters. Default: the file's name without .yaml (`<name>.1`, `<name>.2`, ... in a batch).",
    )

    @field_validator("sections", mode="after")
    @classmethod
    def _sections_total(cls, value: list[Section] | None, info: ValidationInfo) -> list[Section] | None:
        return _check_sections_total(value, info)

    @model_validator(mode="before")
    @classmethod
    def _sections_stand_for_prompt(cls, data: Any, info: ValidationInfo) -> Any:
        # With sections, `prompt` (their texts joined, for titles and tags) and `duration` (their sum)
        # are derived, so every stage that reads a job's prompt and length keeps working.
        if not isinstance(data, dict) or data.get("sections") is None:
            return data
        clash = [k for k in ("prompt", "duration") if k in data]
        if clash:
            raise PydanticCustomError(
                "sections_exclusive",
                "'{key}' cannot be used together with 'sections' "
                "(each section has its own prompt and duration)",
                {"key": clash[0]},
            )
        prompt, duration = _sections_summary(data["sections"])
        limit = _duration_limit(info)
        data = dict(data)
        # When the sections are invalid their own errors are reported, not a derived field's.
        data["prompt"] = prompt if prompt is not None else "(sections)"
        if duration is not None and duration <= limit:
            data["duration"] = duration
        return data

    @model_validator(mode="before")
    @classmethod
    def _loop_duration(cls, data: Any) -> Any:
        return music.loop_default_duration(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _asked_music(self) -> "JobSpec":
        fields = ("loop", "bpm", "time_signature", "duration", "count", "candidates", "keep_candidates")
        music.check_asked(**{f: getattr(self, f) for f in fields})
        return self

    @model_validator(mode="after")
    def _one_reference_role(self) -> "JobSpec":
        if self.continue_from is not None and self.melody is not None:
            raise PydanticCustomError(
                "references_exclusive",
                "'melody' cannot be combined with 'continue_from' in one job",
                {"key": "melody"},
            )
        return self

    @model_validator(mode="after")
    def _one_edit(self) -> "JobSpec":
        edits = [k for k in EDIT_KEYS if getattr(self, k) is not None]
        if not edits:
            return self
        clash = edits[1:] + [k for k in ("continue_from", "melody", "sections", "loop") if getattr(self, k)]
        if clash:
            raise music.music_rule(
                clash[0],
                f"'{clash[0]}' cannot be combined with '{edits[0]}' in one job",
                f"an edit reads one source only: remove `{clash[0]}:`, or make it a job of its own",
            )
        if self.candidates > 1 or (self.extract is not None and self.count > 1):
            key = "candidates" if self.candidates > 1 else "count"
            raise music.music_rule(
                key,
                f"'{key}' cannot be combined with '{edits[0]}'",
                f"remove `{key}:`; an edit writes "
                + ("one file per track" if self.extract is not None else "count variations of the edit"),
            )
        return self

    def spec_dump(self) -> dict[str, Any]:
        """The fields as written (the job's keys and its defaults', nothing filled in), so the job
        built from it knows which keys were set: a sections job without its derived prompt and
        duration."""
        exclude = {"prompt", "duration"} if self.sections is not None else set()
        return self.model_dump(exclude=exclude, exclude_unset=True)


class Job(JobSpec):
    """A validated job with its id resolved: what the daemon queues and runs."""

    # A normalized job carries prompt, duration and sections together (the first two derived).
    model_config = ConfigDict(json_schema_extra=None)

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
    __doc__="Values merged under every job of a batch; "
    "a job's own values win (sampling and output key by key).",
    **_partial_job_fields(),
)


def merge_defaults(defaults: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """A job's raw mapping with the batch defaults under it; `sampling`/`output` merge key by key."""
    merged = dict(defaults)
    # `sections` replaces `prompt` + `duration`: whichever a job sets, the other from defaults goes.
    if "sections" in job:
        merged.pop("prompt", None)
        merged.pop("duration", None)
    elif "prompt" in job or "duration" in job:
        merged.pop("sections", None)
    # A job's reference replaces the defaults' (a job takes one role: continuation or melody).
    if "continue_from" in job:
        merged.pop("melody", None)
    elif "melody" in job:
        merged.pop("continue_from", None)
    job_output = job.get("output")
    if isinstance(job_output, dict) and "format" in job_output and isinstance(merged.get("output"), dict):
        # Keys of the defaults' format that do not apply to the job's own format are left behind.
        fmt = job_output["format"]
        drop = {"codec"} if fmt != "ogg" else set()
        if fmt not in LOSSY_FORMATS:
            drop.add("quality")
        else:
            drop.add("subtype")
        merged["output"] = {k: v for k, v in merged["output"].items() if k not in drop}
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
