"""Typed errors of the engine. `error_type` is the string the error sidecar records (docs/design.md).

Every message says what went wrong; `hint` says what the operator can do about it.
"""

from __future__ import annotations


class DgxMusicError(Exception):
    """Base of every error the daemon reports in a sidecar."""

    error_type: str = "internal"

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

    error_type = "generation_error"


class UnknownModelError(ModelLoadError):
    """A job or command named a model that is not in the config's `models:`."""

    error_type = "unknown_model"


class GenerationError(DgxMusicError):
    """Generation failed for a reason other than timeout, cancellation or memory."""

    error_type = "generation_error"


class GenerationTimeoutError(GenerationError):
    """The job ran past its time limit; checked at every decoding step."""

    error_type = "timeout"


class GenerationCancelled(GenerationError):
    """The job was cancelled (cancel request or shutdown); checked at every decoding step."""

    error_type = "cancelled"


class OutOfMemoryError(GenerationError):
    """The accelerator ran out of memory even after freeing the cache and splitting the batch."""

    error_type = "out_of_memory"
