"""The job context every stage logs with: job id, model and stage on each record.

The context lives in a ContextVar, so it follows the code that handles one job and never
leaks into another. Threads start with an empty context (Python does not copy contextvars
into a new thread), so the worker thread enters `job_context(...)` itself for each job.

JobContextFilter copies it onto each record as DGX_MUSIC_JOB_ID / DGX_MUSIC_MODEL /
DGX_MUSIC_STAGE attributes, which the journal handler (daemon/service/journal.py) sends as
journal fields: `journalctl -u dgx-music DGX_MUSIC_JOB_ID=abc` shows one job's story. The
names are prefixed because JOB_ID is systemd's own field (PID 1 logs its job numbers under
the same unit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_FIELDS = ("DGX_MUSIC_JOB_ID", "DGX_MUSIC_MODEL", "DGX_MUSIC_STAGE")

# Fixed 128-bit ids (as systemd's sd-messages.h) for the records a monitor looks for, the same in
# every version: `journalctl MESSAGE_ID=31e99b5d391c41fdb4bdea8ffe9cadca` lists every completed job.
MESSAGE_ID_JOB_COMPLETED = "31e99b5d391c41fdb4bdea8ffe9cadca"
MESSAGE_ID_JOB_FAILED = "436bf167601344e3968ca3117fc967f2"


def message_id(value: str) -> dict[str, str]:
    """`extra=` for a log call that is one of the records above."""
    return {"MESSAGE_ID": value}


@dataclasses.dataclass(frozen=True)
class JobContext:
    job_id: str | None = None
    model: str | None = None
    stage: str | None = None
    # Every job of a decode batch (job_id is the first): a batch's own records name them all.
    batch: tuple[str, ...] = ()

    def label(self) -> str:
        """`job abc/small/generate`, `job abc (+7 batched)/small/generate`, or `small/load`
        before a job is known; '' when empty."""
        parts = [p for p in (self.model, self.stage) if p]
        if self.job_id:
            more = f" (+{len(self.batch) - 1} batched)" if len(self.batch) > 1 else ""
            parts.insert(0, f"job {self.job_id}{more}")
        return "/".join(parts)

    def fields(self) -> dict[str, str | list[str]]:
        """The journal fields; a batch's DGX_MUSIC_JOB_ID holds every id of it (journald keeps a
        field given more than once, and `journalctl DGX_MUSIC_JOB_ID=x` matches any of them)."""
        job: str | list[str] | None = list(self.batch) if len(self.batch) > 1 else self.job_id
        values = (job, self.model, self.stage)
        return {name: value for name, value in zip(_FIELDS, values) if value}


_CONTEXT: ContextVar[JobContext] = ContextVar("dgx_music_job_context", default=JobContext())


def current_context() -> JobContext:
    return _CONTEXT.get()


@contextlib.contextmanager
def job_context(
    job_id: str | None = None,
    *,
    model: str | None = None,
    stage: str | None = None,
    batch: tuple[str, ...] | list[str] | None = None,
) -> Iterator[JobContext]:
    """Tag every log record inside the block; the previous context comes back on exit.

    Fields left as None are inherited from the enclosing context (a model-level context
    can wrap the per-job ones).
    """
    outer = _CONTEXT.get()
    ctx = JobContext(
        job_id=job_id if job_id is not None else outer.job_id,
        model=model if model is not None else outer.model,
        stage=stage if stage is not None else outer.stage,
        batch=tuple(batch) if batch is not None else outer.batch,
    )
    token = _CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CONTEXT.reset(token)


def set_stage(stage: str | None) -> None:
    """Move the current job to another stage (queued, load, generate, postprocess, write...)."""
    _CONTEXT.set(dataclasses.replace(_CONTEXT.get(), stage=stage))


def update_context(**changes: Any) -> None:
    """Change job_id / model / stage of the current context in place (until the block ends)."""
    unknown = set(changes) - {"job_id", "model", "stage"}
    if unknown:
        raise TypeError(f"unknown job context field(s): {', '.join(sorted(unknown))}")
    _CONTEXT.set(dataclasses.replace(_CONTEXT.get(), **changes))


def _syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JobContextFilter(logging.Filter):
    """Copies the job context onto each record: DGX_MUSIC_JOB_ID/_MODEL/_STAGE attributes
    (journal fields) and `dgx_context` ("[job abc/small/generate] ") for the text formats.

    Attributes a caller passed explicitly via `extra=` win over the context.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _CONTEXT.get()
        for name, value in ctx.fields().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        values = {n: getattr(record, n, None) for n in _FIELDS}
        job = values["DGX_MUSIC_JOB_ID"]
        batch = tuple(job) if isinstance(job, list) else ()
        first = job[0] if isinstance(job, list) else job
        label = JobContext(first, values["DGX_MUSIC_MODEL"], values["DGX_MUSIC_STAGE"], batch).label()
        record.dgx_context = f"[{label}] " if label else ""
        record.dgx_priority = _syslog_priority(record.levelno)
        return True
