"""A claimed job (`Claimed`) and its claim record `work/.<token>.meta.json`."""

from __future__ import annotations

import json
import logging
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.core.config import Settings
from daemon.core.fsio import atomic_write_bytes
from daemon.spool.layout import dump
from daemon.spool.owner import Owner
from jobspec.names import JOB_SUFFIXES

log = logging.getLogger(__name__)

META_VERSION = 1
_TOKEN_STEM_MAX = 100


@dataclass(frozen=True)
class Claimed:
    """A job file that this daemon holds in work/.

    `source_name` is the name it had in the inbox (job ids default to its stem); `submitted_at`
    is that file's mtime, `claimed_at` when the claim happened (UNIX seconds). `attempts` counts
    how often it was started, `crashes` how often its owner died while it ran; `crashed` is set by
    `recover()` when `crashes >= max_attempts`: the caller must fail it with type `crashed`.
    """

    token: str
    claim_id: str
    work_path: Path
    meta_path: Path
    source_name: str
    submitted_at: float
    claimed_at: float
    attempts: int = 0
    crashes: int = 0
    running: bool = False
    crashed: bool = False
    owner: Owner | None = None

    @property
    def stem(self) -> str:
        for suffix in JOB_SUFFIXES:
            if self.source_name.lower().endswith(suffix):
                return self.source_name[: -len(suffix)]
        return self.source_name

    def read_bytes(self, max_bytes: int) -> bytes:
        """Up to `max_bytes + 1` bytes of the job file (one more than allowed, so an oversized
        file is detected without reading all of it). Never follows a link, never blocks on a FIFO.
        """
        fd = os.open(self.work_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFileError(f"{self.source_name}: not a regular file")
            chunks: list[bytes] = []
            left = max_bytes + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def meta(self) -> dict[str, Any]:
        return {
            "version": META_VERSION,
            "claim_id": self.claim_id,
            "token": self.token,
            "source_name": self.source_name,
            "submitted_at": self.submitted_at,
            "claimed_at": self.claimed_at,
            "attempts": self.attempts,
            "crashes": self.crashes,
            "running": self.running,
            "owner": self.owner.to_json() if self.owner else None,
        }


class NotRegularFileError(OSError):
    """A job path turned out not to be a regular file (a link, FIFO, device, socket, directory)."""


def write_meta(claimed: Claimed) -> None:
    atomic_write_bytes(claimed.meta_path, dump(claimed.meta()))


def new_token(stem: str) -> str:
    return f"{stem[:_TOKEN_STEM_MAX]}.{uuid.uuid4().hex[:8]}"


def meta_file(settings: Settings, token: str) -> Path:
    return settings.work / f".{token}.meta.json"


def token_stem(token: str) -> str:
    return token.rsplit(".", 1)[0] if "." in token else token


def load_meta(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(1 << 20))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("work/%s: unreadable claim record (%s); treating the job as unowned", path.name, exc)
        return {}
    return data if isinstance(data, dict) else {}
