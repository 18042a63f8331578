"""Jobs that end in failed/: the original bytes moved there untouched, and `<id>.error.json`."""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.core.config import Settings
from daemon.core.errors import ErrorType
from daemon.core.fsio import atomic_write_bytes
from daemon.spool.layout import dump, iso_utc, unlink_quiet
from daemon.spool.nofollow import Dir
from daemon.spool.records import Claimed
from daemon.spool.reserve import release_id, reserve_id, result_dirs
from jobspec.names import default_job_id, error_name, failed_job_name, source_folder
from jobspec.sidecar import ErrorSidecar

log = logging.getLogger(__name__)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def reject_non_regular(
    settings: Settings, src: Dir, entry: str, st: os.stat_result, *, display_name: str | None = None
) -> Path | None:
    """Move a link / FIFO / socket / device entry `entry` of the folder `src` itself into failed/
    (rename moves the entry, never its target; nothing is opened) and write its error sidecar.
    Returns the failed/ path, or None when the entry vanished first.
    """
    name = display_name or entry
    kind = _kind(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        message = (
            f"{name} is a symbolic link; symlinks are not accepted in the inbox "
            "(copy the file itself, e.g. `cp -L`, or use `dgx-music submit`)"
        )
    else:
        message = f"{name} is {kind}; only regular files are accepted as jobs"
    target = _reject(settings, src, entry, st, name, message, "drop a regular YAML file", source_folder(name))
    if target is not None:
        log.warning("inbox: rejected %s (%s): moved to failed/%s", name, kind, target.name)
    return target


def reject_in_folder(
    settings: Settings, src: Dir, entry: str, st: os.stat_result, *, display_name: str, reason: str
) -> Path | None:
    """A job file of an inbox folder whose name the daemon cannot use for results (`reason`):
    moved, untouched, to failed/ itself (not failed/<folder>/, which could collide too) with an
    `invalid_job` sidecar. Returns the failed/ path, or None when the entry vanished first."""
    target = _reject(
        settings,
        src,
        entry,
        st,
        display_name,
        f"{display_name}: {reason}",
        "rename the folder (not ending like a result file: .json, .yaml, .html, audio), drop the job again",
        "",
    )
    if target is not None:
        log.warning("inbox: rejected %s (%s): moved to failed/%s", display_name, reason, target.name)
    return target


def _reject(
    settings: Settings,
    src: Dir,
    entry: str,
    st: os.stat_result,
    name: str,
    message: str,
    hint: str,
    folder: str,
) -> Path | None:
    failed_dir = failed_dir_for(settings, f"{folder}/x" if folder else "x")
    job_id = reserve_id(settings, default_job_id(name), lambda i: [failed_job_name(i)], folder=folder)
    target = failed_dir / failed_job_name(job_id)
    try:
        try:
            with Dir.root(failed_dir) as dst:
                move_entry_no_clobber(src, entry, dst, target.name)
        except FileNotFoundError:
            return None
        sidecar = error_sidecar(
            job_id=job_id,
            source_file=name,
            error_type=ErrorType.INVALID_JOB,
            message=message,
            hint=hint,
            submitted_at=st.st_mtime,
            started_at=None,
            finished_at=time.time(),
            attempts=0,
        )
        atomic_write_bytes(failed_dir / error_name(job_id), dump(sidecar), create_new=True)
    finally:
        release_id(settings, job_id, folder)
    return target


def error_sidecar(
    *,
    job_id: str,
    source_file: str,
    error_type: str,
    message: str,
    details: list[Mapping[str, Any]] | None = None,
    hint: str | None = None,
    submitted_at: float | None,
    started_at: float | None,
    finished_at: float,
    attempts: int,
    status: str = "failed",
    request: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An `<id>.error.json` body with the fields of docs/design.md (jobspec's ErrorSidecar validates it when
    present, so both stay in step)."""
    body: dict[str, Any] = {
        "schema_version": 1,
        "job_id": job_id,
        "status": status,
        "source_file": source_file,
        "submitted": iso_utc(submitted_at) if submitted_at is not None else None,
        "started": iso_utc(started_at) if started_at is not None else None,
        "finished": iso_utc(finished_at),
        "error": {
            "type": error_type,
            "message": message,
            "details": [dict(d) for d in (details or [])],
            "hint": hint,
        },
        "attempts": attempts,
    }
    if request is not None:
        body["request"] = dict(request)
    return _validated(body)


def _validated(body: dict[str, Any]) -> dict[str, Any]:
    return ErrorSidecar.model_validate(body).model_dump(mode="json")


def _sidecar_bytes(error: Any) -> bytes:
    if hasattr(error, "model_dump"):
        return dump(error.model_dump(mode="json"))
    if isinstance(error, Mapping):
        return dump(dict(error))
    raise TypeError(f"error sidecar must be a mapping or a pydantic model, got {type(error).__name__}")


def fail_job(
    settings: Settings,
    claimed: Claimed,
    error: Mapping[str, Any] | Any,
    *,
    job_id: str,
    keep_work: bool = False,
) -> tuple[Path, Path]:
    """Put the job's original bytes at failed/<job_id>.yaml, then failed/<job_id>.error.json.

    `job_id` must come from `reserve_id` (it is released here). The bytes are moved, not
    rewritten (a hard link then unlink of the work file), unless `keep_work`: other jobs of the
    same batch file still need it, so a copy is written and the claim stays. Without `keep_work`
    the claim is finished (meta removed). A failure to write (full disk, EROFS) raises OSError
    and leaves the claim in work/, to be retried.
    """
    failed_dir = failed_dir_for(settings, claimed.source_name)
    yaml_path = failed_dir / failed_job_name(job_id)
    err_path = failed_dir / error_name(job_id)
    if keep_work:
        data = claimed.work_path.read_bytes()
        _write_new_or_same(yaml_path, data)
    else:
        move_no_clobber(claimed.work_path, yaml_path, accept_same=True)
    atomic_write_bytes(err_path, _sidecar_bytes(error), create_new=True)
    if not keep_work:
        unlink_quiet(claimed.meta_path)
    release_id(settings, job_id, source_folder(claimed.source_name))
    return yaml_path, err_path


def failed_dir_for(settings: Settings, source_name: str) -> Path:
    """failed/, or failed/<folder>/ (created) for a job from inbox/<folder>/."""
    folder = source_folder(source_name)
    if not folder:
        return settings.failed
    directory = result_dirs(settings, folder)[1]
    directory.mkdir(exist_ok=True)
    return directory


def _write_new_or_same(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data, create_new=True)
    except FileExistsError:
        if path.read_bytes() != data:  # a retry after a crash finds its own copy: fine
            raise


def move_no_clobber(src: Path, dst: Path, *, accept_same: bool = False) -> None:
    """rename(2) without replacing an existing `dst`, for paths in the daemon's own folders."""
    with Dir.root(src.parent) as s, Dir.root(dst.parent) as d:
        move_entry_no_clobber(s, src.name, d, dst.name, accept_same=accept_same)


def move_entry_no_clobber(src: Dir, name: str, dst: Dir, dst_name: str, *, accept_same: bool = False) -> None:
    """Entry `name` of `src` becomes `dst_name` in `dst`, never replacing an existing one: link +
    unlink where links work. Both relative to open folders, so no link is followed on the way."""
    linked = True
    try:
        src.link(name, dst, dst_name)
    except FileExistsError:
        # accept_same: a crash came between link and unlink last time; finish that move.
        if not (accept_same and _same_inode(src.lstat(name), dst.lstat(dst_name))):
            raise
    except OSError as exc:
        # EPERM: fs.protected_hardlinks refuses links to a submitter's file; some FUSE/SMB
        # mounts have no hard links at all. The id is reserved, so a rename after the
        # existence check cannot meet a competitor.
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if dst.exists(dst_name):
            raise FileExistsError(errno.EEXIST, "file exists", str(dst.path / dst_name)) from exc
        src.rename(name, dst, dst_name)
        linked = False
    # The new name must be durable before the old one goes, or a power cut could lose both.
    dst.fsync()
    if linked:
        src.unlink(name)
    if linked or not src.same_as(dst):
        src.fsync()


def _same_inode(sa: os.stat_result, sb: os.stat_result) -> bool:
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
