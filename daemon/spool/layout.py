"""The spool on disk: its folders, and small helpers every spool module shares.

Files are the API, so every rule of the spool is about what another process may see at any
moment (docs/design.md, "Spool protocol"):

* A claim is `rename(inbox/X.yaml, work/<token>.yaml)` (`claim.py`); rename(2) on one filesystem is
  atomic, so of several daemons racing for one file exactly one wins.
* Each claimed job has a meta file `work/.<token>.meta.json` written *before* the rename
  (`records.py`), naming its owner (`owner.py`); `recover.py` takes over only jobs whose owner is
  provably dead, by another rename.
* Result ids are reserved no-clobber across daemons (`reserve.py`); failures land in failed/ with
  the original bytes (`failed.py`).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from daemon.core.config import Settings

log = logging.getLogger(__name__)

SPOOL_DIRS = ("inbox", "work", "outbox", "failed", "library", "state")


class SpoolError(Exception):
    """The spool cannot be used as configured; the message says which directory and why."""


# --------------------------------------------------------------------------- layout


def ensure_layout(settings: Settings) -> None:
    """Create inbox/ work/ outbox/ failed/ library/ state/ (and state/ subfolders) below the spool.

    Refuses a layout spread over several filesystems: the claim and every publish step are
    renames, which only work (atomically) within one filesystem. library/ is only ever read
    (reference audio), so it is created but not part of that check.
    """
    root = settings.spool
    try:
        root.mkdir(parents=True, exist_ok=True)
        for path in _layout_dirs(settings):
            path.mkdir(exist_ok=True)
        settings.library.mkdir(exist_ok=True)
    except OSError as exc:
        raise SpoolError(f"cannot create the spool below {root}: {exc}") from exc
    devices: dict[int, list[str]] = {}
    for path in _layout_dirs(settings):
        st = os.stat(path)  # follows a symlinked inbox on purpose: what matters is where files land
        if not stat.S_ISDIR(st.st_mode):
            raise SpoolError(f"{path} exists but is not a directory")
        devices.setdefault(st.st_dev, []).append(path.name)
    if len(devices) > 1:
        groups = "; ".join(", ".join(names) for names in devices.values())
        raise SpoolError(
            f"the spool directories below {root} are on different filesystems ({groups}); "
            "inbox/, work/, outbox/, failed/ and state/ must share one filesystem because claiming "
            "and publishing are renames (mount one volume at the spool root instead)"
        )


def _layout_dirs(settings: Settings) -> list[Path]:
    state = settings.state_dir
    return [
        settings.inbox,
        settings.work,
        settings.outbox,
        settings.failed,
        state,
        state / "reserved",
        state / "cancel",
    ]


def iso_utc(ts: float) -> str:
    return (
        datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=True) + "\n").encode("ascii")


# Names already logged once, so a steady stream of rescans does not repeat the same warning.
_logged_once: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


def log_once(kind: str, name: str, message: str, *args: Any) -> None:
    with _logged_lock:
        if (kind, name) in _logged_once:
            return
        if len(_logged_once) > 10_000:  # bound it: a hostile inbox could hold millions of names
            _logged_once.clear()
        _logged_once.add((kind, name))
    log.warning(message, *args)


def forget_logged(names_present: Iterable[str]) -> None:
    """Drop remembered names that are gone, so a new file with an old name is reported again."""
    present = set(names_present)
    with _logged_lock:
        for key in [k for k in _logged_once if k[1] not in present]:
            _logged_once.discard(key)


def unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
