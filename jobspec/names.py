"""Every file-name rule of the spool, in one place: which inbox names are jobs, the id a job gets
from its file name, which ids are valid, and the names a job's outcome is written under.

The daemon reads and writes files that users name, so these rules are part of the job language:
the validator, the watcher, the claim, id reservation and publishing all call these functions
and nothing else decides a name.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePath

from pydantic_core import PydanticCustomError

JOB_SUFFIXES = (".yaml", ".yml")
# Names editors, office suites, browsers and transfer tools use while a file is incomplete.
PARTIAL_SUFFIXES = (".swp", ".swx", ".tmp", ".part", ".crdownload", ".partial", ".download", "~")
MAX_ID_LEN = 128
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# `reserve_id` may put a `-N` on top of a full-length id so that results never overwrite.
_RESERVED_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(-[0-9]{1,6})?")


def is_ignored_name(name: str) -> bool:
    """Names that are never read: dot-files, editor backups and swap files, partial transfers."""
    if not name or name.startswith(".") or name.startswith("~$") or name.startswith("#"):
        return True
    lower = name.lower()
    return lower.endswith(PARTIAL_SUFFIXES) or lower.startswith(".~lock")


def is_candidate(name: str) -> bool:
    """True for names the daemon treats as job files: `*.yaml` / `*.yml`, never an ignored name."""
    if is_ignored_name(name) or "/" in name or "\0" in name:
        return False
    lower = name.lower()
    return lower.endswith(JOB_SUFFIXES) and len(name) > len(".yml")


def job_stem(filename: str | os.PathLike[str]) -> str:
    """The file name without its directory and its `.yaml` / `.yml` suffix."""
    stem = PurePath(os.fspath(filename)).name
    for suffix in JOB_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def default_job_id(filename: str | os.PathLike[str], *, reserve: int = 0) -> str:
    """The id a job gets from its file name: the stem, made safe for a file name; never empty.

    Characters outside [A-Za-z0-9._-] become '-', '..' collapses, leading punctuation goes, and it
    is cut so that `reserve` characters (a batch's `.N` suffix) still fit in 128.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", job_stem(filename))
    stem = re.sub(r"\.{2,}", ".", stem)
    stem = re.sub(r"^[^A-Za-z0-9]+", "", stem)
    stem = stem[: MAX_ID_LEN - reserve].rstrip(".")
    return stem or "job"


def is_valid_job_id(job_id: str) -> bool:
    """The job-id rule, plus the `-N` suffix a reserved result id may carry."""
    return bool(_RESERVED_ID_RE.fullmatch(job_id)) and ".." not in job_id


def numbered_id(job_id: str, n: int) -> str:
    """The n-th candidate result id: `<id>`, `<id>-2`, `<id>-3`, ..."""
    return job_id if n == 1 else f"{job_id}-{n}"


def audio_names(
    job_id: str, *, ext: str, count: int, kept_candidates: int = 0, tracks: tuple[str, ...] = ()
) -> list[str]:
    """Audio file names of a job: `<id>.<ext>`, or `<id>-v1.<ext>` ... when count > 1; then
    `<id>-c1.<ext>` ... `<id>-c<N>.<ext>` for best-of-N takes kept beside the best (all N are
    reserved: which one is best is known only once they are measured). Stems (`tracks`, an
    extract job): `<id>-<track>.<ext>` each, in the order asked."""
    if tracks:
        return [f"{job_id}-{t}.{ext}" for t in tracks]
    kept = [f"{job_id}-c{i}.{ext}" for i in range(1, kept_candidates + 1)]
    if count == 1:
        return [f"{job_id}.{ext}", *kept]
    return [f"{job_id}-v{i}.{ext}" for i in range(1, count + 1)] + kept


_AUDIO_EXT_RE = re.compile(r"[A-Za-z0-9]{1,8}")
# The stems an extract job may name (jobspec.edit.TRACKS; kept here so names import nothing).
STEM_TRACKS = (
    "vocals",
    "backing_vocals",
    "drums",
    "bass",
    "guitar",
    "keyboard",
    "percussion",
    "strings",
    "synth",
    "fx",
    "brass",
    "woodwinds",
)


def is_own_audio(job_id: str, name: str) -> bool:
    """Whether `name` is one of the audio names `audio_names(job_id, ...)` gives, for any format
    and count: `<id>.<ext>` or `<id>-v<N>.<ext>`. Reserved ids keep these apart between jobs (a
    job whose names exist gets `-2`), so a name that passes belongs to `job_id` and to no other."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not _AUDIO_EXT_RE.fullmatch(ext) or ext.lower() in ("json", "yaml", "yml", "html"):
        return False
    own = re.escape(job_id) + r"-(v[1-9][0-9]{0,5}|" + "|".join(STEM_TRACKS) + ")"
    return stem == job_id or re.fullmatch(own, stem) is not None


def sidecar_name(job_id: str) -> str:
    return f"{job_id}.json"


def error_name(job_id: str) -> str:
    return f"{job_id}.error.json"


def failed_job_name(job_id: str) -> str:
    return f"{job_id}.yaml"


# The daemon's own page of recent results in outbox/ (not a job's outcome).
PAGE_NAME = "index.html"


def outcome_names(job_id: str) -> list[str]:
    """Names besides the audio that an outcome of `job_id` may take in outbox/ or failed/."""
    return [sidecar_name(job_id), error_name(job_id), failed_job_name(job_id)]


# One level of inbox subfolders: inbox/<folder>/<job>.yaml gives outbox/<folder>/ and failed/<folder>/.
# A folder name follows the job-id rule; the folder travels as the first part of the source name.
_FOLDER_RE = re.compile(ID_PATTERN)


def folder_problem(folder: str) -> str | None:
    """Why `folder` cannot be an inbox subfolder, or None when it can."""
    if is_ignored_name(folder):
        return None if folder else "empty folder name"
    if not _FOLDER_RE.fullmatch(folder) or ".." in folder:
        return (
            f"folder name {folder!r} is not allowed: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (as for job ids)"
        )
    return None


# Endings of the files the daemon writes in outbox/ and failed/ (sidecars, job files, audio, the
# page): an inbox folder so named would give outbox/<folder>/ a name one of those files may need.
RESULT_SUFFIXES = (
    ".json",
    ".yaml",
    ".yml",
    ".html",
    ".htm",
    ".wav",
    ".flac",
    ".mp3",
    ".ogg",
    ".oga",
    ".opus",
)


def folder_collision(folder: str) -> str | None:
    """Why the inbox folder `folder` would collide with a file the daemon writes in outbox/ or
    failed/ (the page, a sidecar, a result), or None. Its jobs are refused as invalid_job."""
    lower = folder.lower()
    if lower == PAGE_NAME:
        return f"inbox folder {folder!r} has the name of the daemon's results page (outbox/{PAGE_NAME})"
    if lower.endswith(RESULT_SUFFIXES):
        return (
            f"inbox folder {folder!r} ends like the files the daemon writes in outbox/ and failed/ "
            f"({', '.join(RESULT_SUFFIXES)}), so its results folder could take one of their names"
        )
    return None


def source_name_for(folder: str, name: str) -> str:
    """The source name a job file keeps: `x.yaml`, or `band/x.yaml` from inbox/band/."""
    return f"{folder}/{name}" if folder else name


def source_folder(source_name: str) -> str:
    """The inbox subfolder a source name came from ("" for the inbox itself)."""
    return source_name.split("/", 1)[0] if "/" in source_name else ""


def source_file_name(source_name: str) -> str:
    return source_name.rsplit("/", 1)[-1]


# --- references to audio in the spool --------------------------------------------------------
# `library/<file>` or `outbox/<file>`, never a free path. This is the textual rule (no filesystem
# access, so `validate` runs anywhere); the daemon resolves an accepted reference inside its spool
# and refuses there what leaves it (symlinks, hard paths).

REFERENCE_ROOTS = ("library", "outbox")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")
MAX_PART_CHARS = 255

# One name: no separator, no control character, not hidden (which also excludes '.' and '..').
_PART = r"[^/\\\x00-\x1f\x7f.][^/\\\x00-\x1f\x7f]{0,254}"
# `<root>/<file>` or `<root>/<folder>/<file>`: one folder level, as inbox/<name>/ maps to outbox/<name>/.
REFERENCE_PATTERN = rf"^(?:library|outbox)/(?:{_PART}/)?{_PART}$"
_REFERENCE_RE = re.compile(REFERENCE_PATTERN[1:-1])

REFERENCE_HINT = (
    "write library/<file> for audio kept in the spool's library/, or outbox/<file> for an earlier result; "
    "one folder level at most, no absolute path, '..' or backslash"
)


def check_reference(value: str) -> str:
    """The reference unchanged, or a PydanticCustomError saying which rule it breaks."""
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        raise PydanticCustomError(
            "reference_path",
            "{value} is an absolute path; references stay inside the spool",
            {"value": repr(value)},
        )
    if "\\" in value:
        raise PydanticCustomError(
            "reference_path",
            "{value} contains a backslash; use '/' between folder and file",
            {"value": repr(value)},
        )
    parts = value.split("/")
    if any(p in ("..", ".") for p in parts):
        raise PydanticCustomError(
            "reference_path",
            "{value} contains '.' or '..'; references cannot leave their folder",
            {"value": repr(value)},
        )
    if parts[0] not in REFERENCE_ROOTS:
        raise PydanticCustomError(
            "reference_path",
            "{value} must start with library/ or outbox/",
            {"value": repr(value)},
        )
    if not _REFERENCE_RE.fullmatch(value):
        raise PydanticCustomError(
            "reference_path",
            "{value} is not a reference: one file below library/ or outbox/ (at most one folder level), "
            "no hidden names, empty parts or control characters",
            {"value": repr(value)},
        )
    if not value.lower().endswith(AUDIO_SUFFIXES):
        raise PydanticCustomError(
            "reference_path",
            "{value} is not an audio file name (use one of: {suffixes})",
            {"value": repr(value), "suffixes": ", ".join(AUDIO_SUFFIXES)},
        )
    return value
