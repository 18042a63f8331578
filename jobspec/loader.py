"""From a job file's bytes to validated Jobs, or one JobSpecError listing every problem."""

from __future__ import annotations

import difflib
import math
import os
from typing import Any

from pydantic import BaseModel, ValidationError

from jobspec.errors import ErrorDetail, JobSpecError
from jobspec.models import (
    DEFAULT_MAX_DURATION,
    MAX_BATCH_JOBS,
    MAX_SECTIONS,
    BatchFile,
    Job,
    JobDefaults,
    JobSpec,
    Output,
    Sampling,
    Section,
)
from jobspec.music import BPM_MAX, BPM_MIN
from jobspec.names import REFERENCE_HINT, default_job_id
from jobspec.song import GUIDANCE_MAX, LYRICS_MAX_CHARS, STEPS_MAX
from jobspec.yamlsafe import DEFAULT_MAX_BYTES, LineMap, Path_, line_for, load_yaml_bytes, loc_text

_BATCH_KEYS = ("jobs", "defaults")

# Hints for out-of-range values, by field name.
_RANGE_HINTS: dict[str, str] = {
    "prompt": "describe the music in 3 to 500 characters",
    "temperature": "use 0.1..2.0; for no randomness at all set `greedy: true`",
    "top_k": "use 0..500; 0 turns top-k off",
    "top_p": "use 0..1; 0 turns nucleus sampling off",
    "cfg_coef": "use 1..10; 3 is the MusicGen default",
    "count": "ask for 1 to 8 variations; use more jobs for more",
    "seed": "use a whole number from 0 to 9223372036854775807, or leave it out",
    "loudness_lufs": "use -70..-5 LUFS (-14 for streaming, -16 is the default), or null to skip",
    "true_peak_dbtp": "use -9..0 dBTP (-1 is the default), or null to skip",
    "duration": "use a number of seconds greater than 0",
    "priority": "use high, normal or low",
    "format": "use wav or flac (lossless), mp3 or ogg (small previews)",
    "codec": "use vorbis or opus, with format: ogg",
    "quality": "use 0..1 (1 is best), with format mp3 or ogg",
    "sections": f"give 1 to {MAX_SECTIONS} sections, each `{{prompt: ..., duration: ...}}`",
    "subtype": "use PCM_16, PCM_24 or FLOAT (FLOAT with wav only)",
    "greedy": "write true or false",
    "bpm": f"use a whole number of beats a minute, {BPM_MIN}..{BPM_MAX}, or leave it out",
    "key": 'write the tonic and the mode, e.g. "A minor", "F# major", "Bb min"',
    "time_signature": "write beats/note value, e.g. 4/4, 3/4, 6/8",
    "candidates": "ask for 1 to 8 takes to choose from",
    "bars": "ask for 1 to 64 bars",
    "lyrics": f"write 1 to {LYRICS_MAX_CHARS} characters: lines of words, section tags like [verse] on "
    "lines of their own",
    "language": 'write an ISO 639 code in lower case: "en", "de", "ja", "pt-br"',
    "steps": f"use a whole number of denoising steps, 1..{STEPS_MAX} (8 suits turbo checkpoints)",
    "guidance": f"use 1..{GUIDANCE_MAX:g} (7 is ACE-Step's default), base checkpoints only",
}


def load_job_file(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_duration: float = DEFAULT_MAX_DURATION,
) -> list[Job]:
    """Read and validate a job file. Raises JobSpecError (also when it cannot be read)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            # Read one byte past the limit: enough to know it is too big without reading it all.
            data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                size = os.fstat(handle.fileno()).st_size
                raise JobSpecError(
                    [
                        ErrorDetail(
                            loc="",
                            line=None,
                            msg=f"the file is {max(size, len(data))} bytes; "
                            f"job files are limited to {max_bytes} bytes",
                            hint="split it into several job files (a batch holds up to 32 jobs)",
                        )
                    ],
                    name,
                )
    except OSError as exc:
        raise JobSpecError(
            [ErrorDetail(loc="", line=None, msg=f"cannot read the file: {exc.strerror or exc}")], name
        ) from None
    return load_job_bytes(data, name, max_bytes=max_bytes, max_duration=max_duration)


def load_job_bytes(
    data: bytes,
    filename: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_duration: float = DEFAULT_MAX_DURATION,
) -> list[Job]:
    """Validate a job file's bytes: one Job per job in it, ids resolved. Raises JobSpecError."""
    root, lines = load_yaml_bytes(data, filename, max_bytes=max_bytes)
    context = {"max_duration": max_duration}
    if any(key in root for key in _BATCH_KEYS):
        return _load_batch(root, lines, filename, context)
    raw = dict(root)
    if "id" not in raw:
        raw["id"] = default_job_id(filename)
    try:
        return [Job.model_validate(raw, context=context)]
    except ValidationError as exc:
        details = [_detail(err, lines, batch=False) for err in exc.errors(include_url=False)]
        raise JobSpecError(_dedupe(details), filename) from None


def _load_batch(root: dict[str, Any], lines: LineMap, filename: str, context: dict[str, Any]) -> list[Job]:
    details: list[ErrorDetail] = []
    if "jobs" not in root:
        stray = [k for k in root if k not in _BATCH_KEYS]
        details.append(
            ErrorDetail(
                loc="jobs",
                line=lines.get(("defaults",)),
                msg="`defaults:` is only for batch files, and this one has no `jobs:` list",
                hint="add `jobs:` with a list of jobs, or move the values to the top level for a single job"
                + (f" (also found: {', '.join(stray)})" if stray else ""),
            )
        )
        raise JobSpecError(details, filename)
    try:
        batch = BatchFile.model_validate(root, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        defaults_locs = {tuple(e["loc"][1:]) for e in errors if e["loc"][:1] == ("defaults",)}
        raw_jobs = root.get("jobs") if isinstance(root.get("jobs"), list) else []
        raw_defaults = root.get("defaults") if isinstance(root.get("defaults"), dict) else {}
        for err in errors:
            loc = tuple(err["loc"])
            if len(loc) >= 3 and loc[0] == "jobs" and isinstance(loc[1], int):
                sub = loc[2:]
                job_raw = raw_jobs[loc[1]] if loc[1] < len(raw_jobs) else None
                # A bad value that came from `defaults:` is reported there once, not once per job.
                if (
                    not _has_path(job_raw, sub)
                    and _has_path(raw_defaults, sub)
                    and _covered(sub, defaults_locs)
                ):
                    continue
            details.append(_detail(err, lines, batch=True))
        raise JobSpecError(_dedupe(details), filename) from None

    stem = default_job_id(filename, reserve=len(f".{MAX_BATCH_JOBS}"))
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for index, spec in enumerate(batch.jobs):
        job_id = spec.id or f"{stem}.{index + 1}"
        if job_id in seen:
            details.append(
                ErrorDetail(
                    loc=f"jobs[{index}].id",
                    line=line_for(lines, ("jobs", index, "id")),
                    msg=f"duplicate job id '{job_id}' (also used by jobs[{seen[job_id]}])",
                    hint="give every job in a batch its own id, or leave ids out",
                )
            )
            continue
        seen[job_id] = index
        jobs.append(Job.model_validate({**spec.spec_dump(), "id": job_id}, context=context))
    if details:
        raise JobSpecError(details, filename)
    return jobs


def _has_path(data: Any, path: Path_) -> bool:
    for part in path:
        if isinstance(data, dict) and isinstance(part, str) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return False
    return True


def _covered(sub: Path_, defaults_locs: set[Path_]) -> bool:
    return any(sub[: len(d)] == d for d in defaults_locs if d)


def _dedupe(details: list[ErrorDetail]) -> list[ErrorDetail]:
    """Drop repeats and put the problems in file order, as an editor would list them."""
    seen: set[tuple[str, int | None, str]] = set()
    unique = []
    for d in details:
        key = (d.loc, d.line, d.msg)
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return sorted(unique, key=lambda d: (d.line is None, d.line or 0))


def _model_at(parent: Path_, batch: bool) -> tuple[type[BaseModel] | None, tuple[str, ...]]:
    """The model whose keys are valid under `parent`, and any extra keys valid there."""
    if not parent:
        return (None, _BATCH_KEYS) if batch else (JobSpec, _BATCH_KEYS)
    last = parent[-1]
    if last == "sampling":
        return Sampling, ()
    if last == "output":
        return Output, ()
    if last == "defaults":
        return JobDefaults, ()
    if isinstance(last, int) and parent[0] == "jobs":
        return JobSpec, ()
    if isinstance(last, int) and len(parent) >= 2 and parent[-2] == "sections":
        return Section, ()
    return None, ()


def _valid_keys(parent: Path_, batch: bool) -> list[str]:
    model, extra = _model_at(parent, batch)
    keys = list(model.model_fields) if model is not None else []
    return keys + [k for k in extra if k not in keys]


def _unknown_key_hint(key: str, parent: Path_, batch: bool) -> str:
    valid = _valid_keys(parent, batch)
    if key == "id" and parent == ("defaults",):
        return "ids must differ between jobs: set `id` on each job, or leave it out"
    if batch and not parent and key in JobSpec.model_fields:
        return (
            f"a batch file holds only `jobs:` and `defaults:`; move '{key}' under `defaults:` or into a job"
        )
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(key.lower(), valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "valid keys here: " + ", ".join(valid)


def show_value(value: Any) -> str:
    """A value as the job file would write it, short: for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _detail(err: dict[str, Any], lines: LineMap, *, batch: bool) -> ErrorDetail:
    loc: Path_ = tuple(err["loc"])
    kind: str = err["type"]
    value = err.get("input")
    field = next((p for p in reversed(loc) if isinstance(p, str)), "")
    line = line_for(lines, loc)
    hint: str | None = _RANGE_HINTS.get(field)
    msg = str(err["msg"])

    if kind in ("sections_exclusive", "references_exclusive"):
        key = str((err.get("ctx") or {}).get("key", ""))
        where = (*loc, key) if key else loc
        hint = (
            "use either `sections:` or `prompt:` + `duration:`"
            if kind == "sections_exclusive"
            else "continue from one file, or follow a melody with another job"
        )
        return ErrorDetail(loc=loc_text(where), line=line_for(lines, where), msg=msg, hint=hint)
    if kind == "music_rule":
        ctx = err.get("ctx") or {}
        where, hint = (*loc, str(ctx.get("key", ""))), str(ctx.get("hint"))
        return ErrorDetail(loc=loc_text(where), line=line_for(lines, where), msg=msg, hint=hint)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        return ErrorDetail(
            loc=loc_text(loc),
            line=line,
            msg=f"unknown key '{key}'",
            hint=_unknown_key_hint(key, loc[:-1], batch),
        )
    if kind == "missing":
        needs_prompt = field == "prompt" and "sections" not in loc
        what = "every job needs a prompt (or sections)" if needs_prompt else None
        return ErrorDetail(loc=loc_text(loc), line=line, msg=f"required key '{field}' is missing", hint=what)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = (
            f"'{field}' must be a mapping of `key: value` lines, not {show_value(value)}"
            if field
            else (f"each job must be a mapping of `key: value` lines, not {show_value(value)}")
        )
        if isinstance(loc[-1], int):
            msg = f"each job must be a mapping of `key: value` lines, not {show_value(value)}"
        return ErrorDetail(loc=loc_text(loc), line=line, msg=msg, hint=None)
    if kind == "list_type":
        return ErrorDetail(
            loc=loc_text(loc),
            line=line,
            msg=f"'{field}' must be a list, not {show_value(value)}",
            hint="write each job as a `- prompt: ...` item under `jobs:`",
        )
    if kind == "too_short" and field == "jobs":
        return ErrorDetail(loc=loc_text(loc), line=line, msg="a batch needs at least one job", hint=None)
    if kind == "too_long" and field == "jobs":
        count = len(value) if isinstance(value, list) else "too many"
        return ErrorDetail(
            loc=loc_text(loc),
            line=line,
            msg=f"a batch holds at most {MAX_BATCH_JOBS} jobs, this one has {count}",
            hint="split it into several files",
        )
    if isinstance(value, bool) and kind in ("float_type", "int_type"):
        return ErrorDetail(
            loc=loc_text(loc), line=line, msg=f"expected a number, got {show_value(value)}", hint=hint
        )
    if isinstance(value, str) and kind in ("float_type", "int_type"):
        return ErrorDetail(
            loc=loc_text(loc),
            line=line,
            msg=f"expected a number, got the string {show_value(value)}",
            hint="write the number without quotes",
        )
    if kind == "int_type" and isinstance(value, float):
        return ErrorDetail(
            loc=loc_text(loc), line=line, msg=f"expected a whole number, got {show_value(value)}", hint=hint
        )
    if kind == "bool_type":
        return ErrorDetail(
            loc=loc_text(loc), line=line, msg=f"expected true or false, got {show_value(value)}", hint=hint
        )
    if kind == "string_type":
        return ErrorDetail(
            loc=loc_text(loc),
            line=line,
            msg=f"expected text, got {show_value(value)}",
            hint="put the text in quotes" if not isinstance(value, (dict, list)) else None,
        )
    if kind == "finite_number":
        return ErrorDetail(
            loc=loc_text(loc), line=line, msg=f"must be a finite number, got {show_value(value)}", hint=hint
        )
    if kind in ("string_too_short", "string_too_long") and field == "prompt":
        length = len(value.strip()) if isinstance(value, str) else 0
        msg = f"prompt is {length} characters after trimming; it must be 3..500"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error"):
        # pydantic's "Input should be ..." in the project's words: what the value must be, and was.
        msg = f"must be {msg.removeprefix('Input should be ')}, got {show_value(value)}"
    elif kind in ("string_pattern_mismatch", "job_id") and field == "id":
        msg = (
            f"{show_value(value)} is not a valid job id: use letters, digits, '.', '_' and '-', starting "
            "with a letter or digit, at most 128 characters, no '..'"
        )
        hint = "ids become file names, so paths and hidden names are refused"
    elif kind in ("string_pattern_mismatch", "model_name") and field == "model":
        msg = f"{show_value(value)} is not a model name"
        hint = "use a name from the daemon's `models:` config (never a path), or leave it out"
    elif kind == "duration_too_long" and field == "sections":
        hint = "ask the operator to raise max_duration, or shorten the sections"
    elif kind == "duration_too_long":
        hint = "ask the operator to raise max_duration, or split the piece"
    elif kind == "subtype_not_allowed" and "FLOAT" in msg:
        hint = "use PCM_16 or PCM_24 with flac, or format: wav for FLOAT"
    elif kind == "subtype_not_allowed":
        hint = "leave subtype out for mp3 and ogg; quality sets their size"
    elif kind == "codec_not_allowed":
        hint = "set format: ogg to choose vorbis or opus, or leave codec out"
    elif kind == "quality_not_allowed":
        hint = "leave quality out for wav and flac; subtype sets their sample format"
    elif kind == "reference_path":
        hint = REFERENCE_HINT
    return ErrorDetail(loc=loc_text(loc), line=line, msg=msg, hint=hint)


def locate_field(data: bytes, filename: str, index: int, field: str) -> tuple[str, int | None]:
    """Where job number `index` of a file sets `field`: its loc text and line, for errors found after
    validation (a reference that cannot be read). In a batch a value may come from `defaults:`."""
    try:
        root, lines = load_yaml_bytes(data, filename)
    except JobSpecError:
        return field, None
    if not any(key in root for key in _BATCH_KEYS):
        return field, line_for(lines, (field,))
    jobs = root.get("jobs") if isinstance(root.get("jobs"), list) else []
    if index < len(jobs) and isinstance(jobs[index], dict) and field in jobs[index]:
        return loc_text(("jobs", index, field)), line_for(lines, ("jobs", index, field))
    if isinstance(root.get("defaults"), dict) and field in root["defaults"]:
        return loc_text(("defaults", field)), line_for(lines, ("defaults", field))
    return loc_text(("jobs", index, field)), line_for(lines, ("jobs", index))
