"""How a job names reference audio: `library/<file>` or `outbox/<file>`, never a free path.

This is the textual rule only (no filesystem access, so `validate` runs anywhere). The daemon
resolves an accepted reference inside its spool and refuses anything that leaves it there
(symlinks, hard paths) with the same kind of error.
"""

from __future__ import annotations

import re

from pydantic_core import PydanticCustomError

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
            "reference_path", "{value} is an absolute path; references stay inside the spool", {"value": repr(value)}
        )
    if "\\" in value:
        raise PydanticCustomError(
            "reference_path", "{value} contains a backslash; use '/' between folder and file", {"value": repr(value)}
        )
    parts = value.split("/")
    if any(p in ("..", ".") for p in parts):
        raise PydanticCustomError(
            "reference_path", "{value} contains '.' or '..'; references cannot leave their folder", {"value": repr(value)}
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
