"""Errors of the job language: every problem is an ErrorDetail a user can act on."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    """One problem in a job file: where it is (field path and line) and what to do about it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loc: str = Field(
        description="Field path, e.g. 'sampling.top_k' or 'jobs[2].duration' (0-based index); "
        "empty when the problem concerns the whole file."
    )
    line: int | None = Field(default=None, ge=1, description="1-based line in the job file, when known.")
    msg: str = Field(description="What is wrong.")
    hint: str | None = Field(default=None, description="How to fix it, when there is a useful hint.")

    def format(self, filename: str | None = None) -> str:
        """`file:line: field: message (hint)`, leaving out the parts that are unknown."""
        where = filename or ""
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        text = f"{self.loc}: {self.msg}" if self.loc else self.msg
        if self.hint:
            text = f"{text} ({self.hint})"
        return f"{where}: {text}" if where else text


class JobSpecError(Exception):
    """A job file that cannot be accepted. `details` lists every problem found."""

    error_type = "invalid_job"

    def __init__(self, details: Sequence[ErrorDetail], filename: str | None = None) -> None:
        if not details:
            raise ValueError("JobSpecError needs at least one ErrorDetail")
        self.details: list[ErrorDetail] = list(details)
        self.filename = filename
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [d.format(self.filename) for d in self.details]
        if len(lines) == 1:
            return lines[0]
        head = f"{self.filename}: {len(lines)} problems" if self.filename else f"{len(lines)} problems"
        return "\n".join([head, *("  " + line for line in lines)])

    @property
    def message(self) -> str:
        """A one-line summary (the first problem, and how many more there are)."""
        first = self.details[0].format(self.filename)
        more = len(self.details) - 1
        return f"{first} (and {more} more)" if more else first
