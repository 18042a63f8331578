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
from daemon.spool.failed import error_sidecar, failed_dir_for, move_entry_no_clobber
from daemon.spool.layout import dump
from daemon.spool.nofollow import Dir, LinkRefused, open_below
from daemon.spool.reserve import release_id, reserve_id
from jobspec import JobSpecError, load_job_bytes
from jobspec.names import (
    default_job_id,
    error_name,
    folder_collision,
    folder_problem,
    is_candidate,
    is_ignored_name,
    source_name_for,
)

log = logging.getLogger(__name__)


def _inbox_files(settings: Settings) -> list[tuple[str, str]]:
    """(folder, name) of the job-file candidates of the inbox and of its subfolders one level
    deep (those the watcher reads: a valid folder name, not an ignored one, not a link), in name
    order. Listed through descriptors opened without following links (daemon.spool.nofollow)."""
    try:
        inbox = Dir.root(settings.inbox)
    except FileNotFoundError:
        return []
    files: list[tuple[str, str]] = []
    with inbox:
        for name, st in sorted(inbox.entries()):
            if is_candidate(name):
                files.append(("", name))
            elif _readable_folder(name) and stat.S_ISDIR(st.st_mode):
                try:
                    with inbox.sub(name) as folder:
                        files += [(name, n) for n in sorted(folder.names()) if is_candidate(n)]
                except OSError:
                    continue
    return files


def _readable_folder(name: str) -> bool:
    # A folder whose name collides with result files is never claimed (its jobs are refused).
    return not is_ignored_name(name) and folder_problem(name) is None and folder_collision(name) is None


def _read_entry(settings: Settings, folder: str, name: str) -> bytes | None:
    """The bytes of a regular inbox file, never through a link (None when it cannot be read)."""
    try:
        with open_below(settings.inbox, [folder] if folder else []) as src:
            return src.read_bytes(name, settings.max_job_bytes + 1)
    except OSError:
        return None


def find_in_inbox(settings: Settings, job_id: str) -> Path | None:
    """The inbox file (inbox/ or one of its subfolders) that holds job `job_id` alone: named after
    it, or a one-job file whose `id:` is it. A job inside a batch file is not cancelled alone (the
    file is one unit)."""
    for folder, name in _inbox_files(settings):
        data = _read_entry(settings, folder, name)
        if data is None:
            continue
        try:
            jobs = load_job_bytes(
                data, name, max_bytes=settings.max_job_bytes, max_duration=settings.max_duration
            )
        except JobSpecError:
            jobs = []
        path = settings.inbox / folder / name if folder else settings.inbox / name
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
    folder = "" if path.parent == settings.inbox else path.parent.name
    if folder and path.parent.parent != settings.inbox:
        raise ValueError(f"{path} is not a job file of the inbox")
    source = source_name_for(folder, path.name)
    failed = failed_dir_for(settings, source)
    # Take the file out of the inbox first (a claim-like rename into failed/ under a dot-name
    # that nothing reads), then give it its final no-clobber name. Relative to folders opened
    # without following links: a folder swapped for a link is never entered.
    # Not a `.tmp` name: stale-temp cleaning must never take a user's job file.
    hold = f".{path.name}.{secrets.token_hex(6)}.cancelling"
    try:
        src = open_below(settings.inbox, [folder] if folder else [])
    except LinkRefused:
        return None
    with src, Dir.root(failed) as dst:
        try:
            st = src.lstat(path.name)
            if not stat.S_ISREG(st.st_mode):
                return None
            src.rename(path.name, dst, hold)
        except FileNotFoundError:
            return None
        return _finish(settings, src, dst, path.name, hold, st, job_id, folder, source, reason)


def _finish(
    settings: Settings,
    src: Dir,
    dst: Dir,
    name: str,
    hold: str,
    st: os.stat_result,
    job_id: str,
    folder: str,
    source: str,
    reason: str,
) -> Path:
    failed = dst.path
    try:
        final_id = reserve_id(settings, job_id, lambda i: [f"{i}.yaml"], folder=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            dst.rename(hold, src, name)
        raise
    try:
        move_entry_no_clobber(dst, hold, dst, f"{final_id}.yaml")
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
            dst.rename(hold, src, name)
        raise
    finally:
        release_id(settings, final_id, folder)
    log.info("inbox: %s cancelled before pickup: moved to %s", source, failed / f"{final_id}.yaml")
    return err
