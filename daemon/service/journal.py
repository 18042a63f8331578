"""Where the daemon's log records go: the journal under systemd, plain lines on a terminal.

Under systemd, stderr is a journal stream (JOURNAL_STREAM=<dev>:<ino> matches fstat(stderr));
then records go through `systemd.journal.JournalHandler`, which sends every upper-case record
attribute as a journal field: the job context's DGX_MUSIC_JOB_ID, DGX_MUSIC_MODEL and
DGX_MUSIC_STAGE (daemon/core/logctx.py) and the MESSAGE_ID of the completed/failed records.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

from daemon.core.logctx import JobContextFilter

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


def send_repeating(
    MESSAGE: str,
    MESSAGE_ID: Any = None,
    CODE_FILE: str | None = None,
    CODE_LINE: int | None = None,
    CODE_FUNC: str | None = None,
    **fields: Any,
) -> None:
    """systemd.journal.send, except that a list value is sent as its field repeated: a decode
    batch's records carry DGX_MUSIC_JOB_ID once per job, so each job's story includes them."""
    assert _sd_journal is not None
    lines: list[str | bytes] = ["MESSAGE=" + MESSAGE]
    if MESSAGE_ID is not None:
        lines.append("MESSAGE_ID=" + getattr(MESSAGE_ID, "hex", MESSAGE_ID))
    named = (("CODE_FILE", CODE_FILE), ("CODE_LINE", CODE_LINE), ("CODE_FUNC", CODE_FUNC))
    for key, value in (*named, *fields.items()):
        for one in value if isinstance(value, list) else [value]:
            if one is None:
                continue
            lines.append(key.encode() + b"=" + one if isinstance(one, bytes) else f"{key}={one}")
    _sd_journal.sendv(*lines)


def make_journal_handler(**sender: Any) -> logging.Handler:
    """A JournalHandler tagged SYSLOG_IDENTIFIER=dgx-music; `sender` is for tests
    (`sender_function=`)."""
    if _sd_journal is None:
        raise RuntimeError("systemd-python is not installed: no journal handler")
    sender.setdefault("sender_function", send_repeating)
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
