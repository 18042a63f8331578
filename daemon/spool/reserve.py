"""Result ids: `<id>`, `<id>-2`, ... reserved no-clobber across daemons (an O_EXCL file in state/reserved/).

Ids are reserved per result folder: a job from inbox/<folder>/ writes to outbox/<folder>/ and
failed/<folder>/ and cannot collide with a job of another folder, so `dup` in inbox/f1/ and `dup`
in inbox/f2/ both keep their id (reservation files `dup` for the inbox itself, `f1+dup`, `f2+dup`:
'+' is in neither a folder name nor an id). A reservation records the claim it belongs to, so a
recovered job gets its old id back instead of `<id>-2`; an in-process set keeps jobs of one daemon
apart before their files exist."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.core.config import Settings
from daemon.core.fsio import TEMP_SUFFIX
from daemon.spool.layout import SpoolError, dump, unlink_quiet
from daemon.spool.owner import Owner, current_owner, owner_alive
from jobspec.names import error_name, is_valid_job_id, numbered_id, outcome_names, sidecar_name

_MAX_SUFFIX = 100_000


_reserved: dict[Path, set[str]] = {}
_reserved_lock = threading.Lock()


def _reservation_dir(settings: Settings) -> Path:
    return settings.state_dir / "reserved"


def reservation_name(job_id: str, folder: str = "") -> str:
    """The name of `job_id`'s reservation in state/reserved/ for results in the inbox folder `folder`."""
    return f"{folder}+{job_id}" if folder else job_id


def reserve_id(
    settings: Settings,
    job_id: str,
    names_for: Callable[[str], list[str]],
    *,
    claim_id: str | None = None,
    folder: str = "",
) -> str:
    """The first of `job_id`, `job_id-2`, `job_id-3`, ... such that no name the job would write
    (`names_for(candidate)`, plus the candidate's `.json`, `.error.json` and `.yaml`) exists in
    outbox/ or failed/, and no other job in flight holds it. Call `release_id` once the job's
    outcome is on disk (`fail_job`/`complete_job` do it for ids they are given).

    `claim_id`: a recovered job passes its `Claimed.claim_id` and gets back the id it had reserved
    before the crash.
    """
    if not is_valid_job_id(job_id):
        raise ValueError(f"{job_id!r} is not a valid job id")
    res_dir = _reservation_dir(settings)
    res_dir.mkdir(parents=True, exist_ok=True)
    key = settings.spool.resolve()
    owner = current_owner()
    for n in range(1, _MAX_SUFFIX):
        candidate = numbered_id(job_id, n)
        with _reserved_lock:
            held = _reserved.setdefault(key, set())
            slot = reservation_name(candidate, folder)
            path = res_dir / slot
            # Our own reservation (a recovered claim) comes first: the job's outputs may already
            # be on disk, and the caller must learn its old id to see that.
            if claim_id is not None and _reservation_claim(path) == claim_id:
                held.add(slot)
                return candidate
            if slot in held:
                continue
            if _names_taken(settings, candidate, names_for, folder):
                continue
            record = dump({"claim_id": claim_id, "owner": owner.to_json(), "reserved_at": time.time()})
            if _stale_empty(path):
                unlink_quiet(path)
            if not _create_with(path, record):
                continue
            held.add(slot)
            return candidate
    raise SpoolError(f"no free result id for {job_id!r} after {_MAX_SUFFIX} tries")


def outcome_exists(settings: Settings, job_id: str, folder: str = "") -> bool:
    """True when `job_id` already has its final outcome on disk (outbox/<id>.json or
    failed/<id>.error.json, in the job's inbox subfolder): a recovered claim whose job finished
    just before the crash."""
    outbox, failed = result_dirs(settings, folder)
    return (outbox / sidecar_name(job_id)).exists() or (failed / error_name(job_id)).exists()


def result_dirs(settings: Settings, folder: str = "") -> tuple[Path, Path]:
    """outbox/ and failed/, or outbox/<folder>/ and failed/<folder>/ for an inbox subfolder's job."""
    if not folder:
        return settings.outbox, settings.failed
    return settings.outbox / folder, settings.failed / folder


def result_folders(root: Path) -> list[tuple[str, Path]]:
    """(folder, directory) for outbox/ or failed/ itself ("", root) and each of its per-inbox-folder
    subdirectories (not a dot-folder, not a link); a root that cannot be listed gives itself only."""
    out = [("", root)]
    with contextlib.suppress(OSError):
        for d in os.scandir(root):
            if not d.name.startswith(".") and d.is_dir(follow_symlinks=False):
                out.append((d.name, Path(d.path)))
    return out


def _create_with(path: Path, record: bytes) -> bool:
    """Create `path` holding `record`, or return False when it exists. The file appears with its
    content (a temp linked into place), so a kill can never leave an empty reservation behind:
    an empty one would name no claim and cost a recovered job its id."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, record)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links here: O_EXCL is still exclusive, only no longer born with its content.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, record)
        finally:
            os.close(fd)
        return True
    finally:
        unlink_quiet(tmp)


def _stale_empty(path: Path, *, older_than_s: float = 10.0) -> bool:
    """An empty reservation left by a kill (older versions, or a filesystem without links)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return st.st_size == 0 and time.time() - st.st_mtime > older_than_s


def _names_taken(
    settings: Settings, candidate: str, names_for: Callable[[str], list[str]], folder: str = ""
) -> bool:
    names = {*names_for(candidate), *outcome_names(candidate)}
    for name in names:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"names_for returned {name!r}: give bare file names")
        for directory in result_dirs(settings, folder):
            if os.path.lexists(directory / name):
                return True
    return False


def _load_reservation(path: Path) -> dict[str, Any] | None:
    # O_EXCL create and the write are two steps: an empty or short file is one being written.
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _reservation_claim(path: Path) -> str | None:
    data = _load_reservation(path)
    return str(data["claim_id"]) if data and data.get("claim_id") else None


def release_id(settings: Settings, job_id: str, folder: str = "") -> None:
    """Give up a reservation (after the outcome is written, or when the job is dropped)."""
    key = settings.spool.resolve()
    slot = reservation_name(job_id, folder)
    with _reserved_lock:
        _reserved.get(key, set()).discard(slot)
        unlink_quiet(_reservation_dir(settings) / slot)


def clean_reservations(
    settings: Settings, live_claims: set[str], me: Owner, *, alive: Callable[..., bool] | None = None
) -> None:
    """Remove id reservations of no live claim whose owner is dead (`alive(owner, since=...)`,
    default: this host's /proc check, under which owners elsewhere count as alive)."""
    res_dir = _reservation_dir(settings)
    try:
        names = os.listdir(res_dir)
    except FileNotFoundError:
        return
    key = settings.spool.resolve()
    for name in names:
        with _reserved_lock:
            if name in _reserved.get(key, set()):
                continue
            data = _load_reservation(res_dir / name)
            if not data:
                if _stale_empty(res_dir / name):
                    unlink_quiet(res_dir / name)
                continue  # being written right now, or unreadable: leave it
            if data.get("claim_id") in live_claims:
                continue
            owner_data = data.get("owner")
            if owner_data:
                owner = Owner.from_json(owner_data)
                since = data.get("reserved_at")
                if alive(owner, since=since) if alive else owner_alive(owner, me=me):
                    continue
            unlink_quiet(res_dir / name)
