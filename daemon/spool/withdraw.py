"""Cancelling a job that no daemon has claimed yet: its file leaves inbox/ for failed/.

The move is the same rename a claim is, so it races a daemon's claim safely: exactly one of them
gets the file. The bytes stay untouched (failed/<id>.yaml), and `<id>.error.json` says
`cancelled`, as for a job cancelled in the queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import time
from pathlib import Path

from daemon.core.config import Settings
from daemon.core.fsio import atomic_write_bytes
from daemon.spool.failed import error_sidecar, failed_dir_for, move_no_clobber
from daemon.spool.layout import dump
from daemon.spool.reserve import release_id, reserve_id
from jobspec import JobSpecError, load_job_bytes
from jobspec.names import (
    default_job_id,
    error_name,
    folder_problem,
    is_candidate,
    is_ignored_name,
    source_name_for,
)

log = logging.getLogger(__name__)


def _inbox_files(settings: Settings) -> list[Path]:
    """Job-file candidates of the inbox and of its subfolders one level deep (those the watcher
    reads: a valid folder name, not an ignored one), in name order."""
    try:
        top = sorted(os.listdir(settings.inbox))
    except FileNotFoundError:
        return []
    files: list[Path] = []
    for name in top:
        path = settings.inbox / name
        if is_candidate(name):
            files.append(path)
        elif not is_ignored_name(name) and folder_problem(name) is None and path.is_dir():
            try:
                files += [path / n for n in sorted(os.listdir(path)) if is_candidate(n)]
            except OSError:
                continue
    return files


def find_in_inbox(settings: Settings, job_id: str) -> Path | None:
    """The inbox file (inbox/ or one of its subfolders) that holds job `job_id` alone: named after
    it, or a one-job file whose `id:` is it. A job inside a batch file is not cancelled alone (the
    file is one unit)."""
    for path in _inbox_files(settings):
        name = path.name
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            with open(path, "rb") as fh:
                data = fh.read(settings.max_job_bytes + 1)
        except OSError:
            continue
        try:
            jobs = load_job_bytes(
                data, name, max_bytes=settings.max_job_bytes, max_duration=settings.max_duration
            )
        except JobSpecError:
            jobs = []
        if len(jobs) == 1 and jobs[0].id == job_id:
            return path
        if not jobs and default_job_id(name) == job_id:
            return path
    return None


def withdraw(
    settings: Settings,
    path: Path,
    job_id: str,
    *,
    reason: str = "cancelled by request before it was picked up",
) -> Path | None:
    """Move inbox `path` to failed/<id>.yaml and write a `cancelled` error sidecar. Returns the
    error sidecar's path, or None when a daemon claimed the file first. PermissionError when
    this user may not write failed/ (the caller then asks the daemon instead). A file from
    inbox/<folder>/ goes to failed/<folder>/, as the daemon's failures of it would."""
    st = os.lstat(path)
    folder = "" if path.parent == settings.inbox else path.parent.name
    source = source_name_for(folder, path.name)
    failed = failed_dir_for(settings, source)
    # Take the file out of the inbox first (a claim-like rename into failed/ under a dot-name
    # that nothing reads), then give it its final no-clobber name.
    # Not a `.tmp` name: stale-temp cleaning must never take a user's job file.
    hold = failed / f".{path.name}.{secrets.token_hex(6)}.cancelling"
    try:
        os.rename(path, hold)
    except FileNotFoundError:
        return None
    try:
        final_id = reserve_id(settings, job_id, lambda i: [f"{i}.yaml"], folder=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(hold, path)
        raise
    try:
        move_no_clobber(hold, failed / f"{final_id}.yaml")
        body = error_sidecar(
            job_id=final_id,
            source_file=source,
            error_type="cancelled",
            message=reason,
            hint=None,
            submitted_at=st.st_mtime,
            started_at=None,
            finished_at=time.time(),
            attempts=0,
            status="cancelled",
        )
        err = failed / error_name(final_id)
        atomic_write_bytes(err, dump(body), create_new=True)
    except BaseException:
        # Never lose the user's file: put it back where it was.
        with contextlib.suppress(OSError):
            os.rename(hold, path)
        raise
    finally:
        release_id(settings, final_id)
    log.info("inbox: %s cancelled before pickup: moved to %s", source, failed / f"{final_id}.yaml")
    return err
