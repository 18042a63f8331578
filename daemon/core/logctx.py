"""Logging: journal fields (JOB_ID, MODEL, STAGE) under systemd, plain lines on a terminal.

The job context lives in a ContextVar, so it follows the code that handles one job and never
leaks into another. Threads start with an empty context (Python does not copy contextvars
into a new thread), so the worker thread enters `job_context(...)` itself for each job.

Under systemd, stderr is a journal stream (JOURNAL_STREAM=<dev>:<ino> matches fstat(stderr));
then records go through `systemd.journal.JournalHandler`, which sends every upper-case record
attribute as a journal field: `journalctl -u dgx-music JOB_ID=abc` shows one job's story.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, TextIO

try:  # systemd-python is Linux-only; without it the journal still gets plain lines.
    from systemd import journal as _sd_journal
except ImportError:  # pragma: no cover - exercised where systemd-python is missing
    _sd_journal = None

SYSLOG_IDENTIFIER = "dgx-music"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(dgx_context)s%(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# journald stamps time and priority itself; the context stays in the text so that a plain
# `journalctl -u dgx-music` still says which job a line belongs to.
JOURNAL_FORMAT = "%(dgx_context)s%(message)s"
# stderr is the journal but systemd-python is missing: journald reads the "<N>" prefix as the
# priority (SyslogLevelPrefix=yes, the default).
PREFIX_FORMAT = "<%(dgx_priority)d>%(dgx_context)s%(message)s"

_FIELDS = ("JOB_ID", "MODEL", "STAGE")


@dataclasses.dataclass(frozen=True)
class JobContext:
    job_id: str | None = None
    model: str | None = None
    stage: str | None = None

    def label(self) -> str:
        """`job abc/small/generate`, or `small/load` before a job is known; '' when empty."""
        parts = [p for p in (self.model, self.stage) if p]
        if self.job_id:
            parts.insert(0, f"job {self.job_id}")
        return "/".join(parts)

    def fields(self) -> dict[str, str]:
        values = (self.job_id, self.model, self.stage)
        return {name: value for name, value in zip(_FIELDS, values) if value}


_CONTEXT: ContextVar[JobContext] = ContextVar("dgx_music_job_context", default=JobContext())


def current_context() -> JobContext:
    return _CONTEXT.get()


@contextlib.contextmanager
def job_context(
    job_id: str | None = None, *, model: str | None = None, stage: str | None = None
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
    """Copies the job context onto each record: JOB_ID/MODEL/STAGE attributes (journal
    fields) and `dgx_context` ("[job abc/small/generate] ") for the text formats.

    Attributes a caller passed explicitly via `extra=` win over the context.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _CONTEXT.get()
        for name, value in ctx.fields().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        values = {n: getattr(record, n, None) for n in _FIELDS}
        label = JobContext(values["JOB_ID"], values["MODEL"], values["STAGE"]).label()
        record.dgx_context = f"[{label}] " if label else ""
        record.dgx_priority = _syslog_priority(record.levelno)
        return True


def journal_stream_matches(stream: TextIO | None = None, env: dict[str, str] | None = None) -> bool:
    """True when `stream` (default: stderr) is the journal stream systemd connected us to.

    Comparing device and inode, as sd_journal_stream_fd's documentation asks, tells a
    service's own stderr apart from one a child inherited after a redirect.
    """
    env = dict(os.environ) if env is None else env
    raw = env.get("JOURNAL_STREAM")
    if not raw:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        dev_s, ino_s = raw.split(":", 1)
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev_s), int(ino_s))
    except (ValueError, OSError, AttributeError):
        # Not "<dev>:<ino>", or a stream with no file descriptor (pytest capture, io.StringIO).
        return False


class _DgxHandlerMarker:
    """Marks the handler setup_logging installed, so a second call (reload) replaces it."""


def make_journal_handler(**sender: Any) -> logging.Handler:
    """A JournalHandler tagged SYSLOG_IDENTIFIER=dgx-music; `sender` is for tests
    (`sender_function=`)."""
    if _sd_journal is None:
        raise RuntimeError("systemd-python is not installed: no journal handler")
    handler = _sd_journal.JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER, **sender)
    handler.setFormatter(logging.Formatter(JOURNAL_FORMAT))
    return handler


def setup_logging(
    level: str | int = "INFO", *, stream: TextIO | None = None, journal: bool | None = None
) -> logging.Handler:
    """Configure the root logger once per process (again on reload: the handler is replaced).

    journal=None decides from JOURNAL_STREAM and the stream; True/False force it (tests).
    Returns the installed handler.
    """
    target = sys.stderr if stream is None else stream
    to_journal = journal_stream_matches(target) if journal is None else journal
    handler: logging.Handler
    if to_journal and _sd_journal is not None:
        handler = make_journal_handler()
    elif to_journal:
        handler = logging.StreamHandler(target)
        handler.setFormatter(logging.Formatter(PREFIX_FORMAT))
    else:
        handler = logging.StreamHandler(target)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT, datefmt=DATE_FORMAT))
    handler.addFilter(JobContextFilter())
    setattr(handler, "_dgx_music", _DgxHandlerMarker())

    root = logging.getLogger()
    for old in list(root.handlers):
        if hasattr(old, "_dgx_music"):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)
    return handler
