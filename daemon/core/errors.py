"""Typed errors of the engine. `error_type` is the string the error sidecar records (docs/design.md).

Every message says what went wrong; `hint` says what the operator can do about it.
"""

from __future__ import annotations

import enum

try:
    from enum import StrEnum
except ImportError:  # Python 3.10

    class StrEnum(str, enum.Enum):  # type: ignore[no-redef]
        def __str__(self) -> str:
            return str(self.value)


class ExitCode(enum.IntEnum):
    """Exit statuses of every command; `serve` adds the two sysexits.h codes systemd is told about."""

    OK = 0
    JOB_FAILED = 1  # a job failed (submit --wait), a check failed (doctor), a benchmark blocker
    USAGE = 2  # invalid input or usage: a bad job file, a bad option, a spool that is not there
    INVALID = 2
    UNAVAILABLE = 69  # EX_UNAVAILABLE: serve could not load the model (systemd backs off and retries)
    CONFIG = 78  # EX_CONFIG: serve got an invalid config or spool (RestartPreventExitStatus=78)
    INTERRUPTED = 130  # Ctrl-C


class ErrorType(StrEnum):
    """`error.type` of a failure sidecar (the JSON Schema lists the same values)."""

    INVALID_JOB = "invalid_job"
    UNKNOWN_MODEL = "unknown_model"
    OUT_OF_MEMORY = "out_of_memory"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    CRASHED = "crashed"
    GENERATION_ERROR = "generation_error"
    INTERNAL = "internal"


class DgxMusicError(Exception):
    """Base of every error the daemon reports in a sidecar."""

    error_type: str = ErrorType.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (fix: {self.hint})"
        return self.message


class ModelLoadError(DgxMusicError):
    """The model could not be loaded: missing files, offline without cache, bad revision, OOM at load.

    The sidecar error types have no "model load" entry; for the job it is a failed generation.
    """

    error_type = ErrorType.GENERATION_ERROR


class UnknownModelError(ModelLoadError):
    """A job or command named a model that is not in the config's `models:`."""

    error_type = ErrorType.UNKNOWN_MODEL


class GenerationError(DgxMusicError):
    """Generation failed for a reason other than timeout, cancellation or memory."""

    error_type = ErrorType.GENERATION_ERROR


class GenerationTimeoutError(GenerationError):
    """The job ran past its time limit; checked at every decoding step."""

    error_type = ErrorType.TIMEOUT


class GenerationCancelled(GenerationError):
    """The job was cancelled (cancel request or shutdown); checked at every decoding step."""

    error_type = ErrorType.CANCELLED


class OutOfMemoryError(GenerationError):
    """The accelerator ran out of memory even after freeing the cache and splitting the batch."""

    error_type = ErrorType.OUT_OF_MEMORY


class InvalidJobError(DgxMusicError):
    """A job that passed the file checks but cannot run as written (a reference that is missing,
    leaves the spool or is not audio; a melody for a model that takes none). `loc` names the
    field as the validator does; `line` is its line in the job file when known."""

    error_type = ErrorType.INVALID_JOB

    def __init__(self, message: str, *, loc: str, hint: str | None = None, line: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.loc = loc
        self.line = line

    def detail(self) -> dict[str, object]:
        """The error sidecar's `details[]` entry."""
        return {"loc": self.loc, "line": self.line, "msg": self.message, "hint": self.hint}
