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


def audio_names(job_id: str, *, ext: str, count: int) -> list[str]:
    """Audio file names of a job: `<id>.<ext>`, or `<id>-v1.<ext>` ... when count > 1."""
    if count == 1:
        return [f"{job_id}.{ext}"]
    return [f"{job_id}-v{i}.{ext}" for i in range(1, count + 1)]


def sidecar_name(job_id: str) -> str:
    return f"{job_id}.json"


def error_name(job_id: str) -> str:
    return f"{job_id}.error.json"


def failed_job_name(job_id: str) -> str:
    return f"{job_id}.yaml"


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
        return (f"folder name {folder!r} is not allowed: use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit (as for job ids)")
    return None


def source_name_for(folder: str, name: str) -> str:
    """The source name a job file keeps: `x.yaml`, or `band/x.yaml` from inbox/band/."""
    return f"{folder}/{name}" if folder else name


def source_folder(source_name: str) -> str:
    """The inbox subfolder a source name came from ("" for the inbox itself)."""
    return source_name.split("/", 1)[0] if "/" in source_name else ""


def source_file_name(source_name: str) -> str:
    return source_name.rsplit("/", 1)[-1]
