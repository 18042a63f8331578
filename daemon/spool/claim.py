"""The rename claim: an inbox file becomes a job in work/.

And the claim's life until its outcome is on disk.
"""

from __future__ import annotations

import logging
import os
import stat
import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from daemon.core.config import Settings
from daemon.spool.failed import reject_in_folder, reject_non_regular
from daemon.spool.layout import log_once, unlink_quiet
from daemon.spool.nofollow import Dir, LinkRefused
from daemon.spool.owner import current_owner
from daemon.spool.records import Claimed, load_meta, meta_file, new_token, write_meta
from daemon.spool.reserve import release_id
from jobspec.names import (
    folder_collision,
    folder_problem,
    is_candidate,
    is_ignored_name,
    source_folder,
    source_name_for,
)

log = logging.getLogger(__name__)


def claim(settings: Settings, inbox_path: Path) -> Claimed | None:
    """Take `inbox_path` into work/. None when it is gone (another daemon won), not a job name,
    a directory (left alone, logged once), or a link / FIFO / device / socket (moved to failed/
    with an `invalid_job` error sidecar; never opened, never followed).
    """
    base = inbox_path.name
    if not is_candidate(base):
        return None
    # inbox/<folder>/<job>.yaml keeps its folder in the source name ("band/x.yaml"): results and
    # failures go to outbox/<folder>/ and failed/<folder>/, also after a crash (it is in the meta).
    folder = inbox_path.parent.name if inbox_path.parent != settings.inbox else ""
    if folder and (
        inbox_path.parent.parent != settings.inbox or folder_problem(folder) or is_ignored_name(folder)
    ):
        return None
    name = source_name_for(folder, base)
    try:
        inbox_dir = Dir.root(settings.inbox)
    except FileNotFoundError:
        return None
    try:
        try:
            src = inbox_dir.sub(folder) if folder else inbox_dir
        except LinkRefused:
            log_once("folder", folder, "inbox: %s/ is a symbolic link; its files are not read", folder)
            return None
        except FileNotFoundError:
            return None
        try:
            collision = folder_collision(folder) if folder else None
            if collision is not None:
                return _refuse_in_folder(settings, src, base, name, collision)
            return _claim_in(settings, src, base, name)
        finally:
            if src is not inbox_dir:
                src.close()
    finally:
        inbox_dir.close()


def _refuse_in_folder(settings: Settings, src: Dir, base: str, name: str, reason: str) -> None:
    try:
        st = src.lstat(base)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return None
    reject_in_folder(settings, src, base, st, display_name=name, reason=reason)
    return None


def _claim_in(settings: Settings, src: Dir, base: str, name: str) -> Claimed | None:
    """The claim of entry `base` of the inbox folder `src` (held open: a swap of its name for a
    link after this point changes nothing, every step below is relative to it)."""
    try:
        st = src.lstat(base)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        log_once("dir", name, "inbox: %s is a directory; directories are not jobs, leaving it alone", name)
        return None
    if not stat.S_ISREG(st.st_mode):
        reject_non_regular(settings, src, base, st, display_name=name)
        return None

    owner = current_owner()
    stem = base.rsplit(".", 1)[0]
    token = new_token(stem)
    claimed = Claimed(
        token=token,
        claim_id=uuid.uuid4().hex,
        work_path=settings.work / f"{token}.yaml",
        meta_path=meta_file(settings, token),
        source_name=name,
        submitted_at=st.st_mtime,
        claimed_at=time.time(),
        owner=owner,
    )
    # Meta first: a work file is never without its meta, so recovery can trust a missing meta.
    write_meta(claimed)
    try:
        with Dir.root(settings.work) as work:
            src.rename(base, work, claimed.work_path.name)
    except FileNotFoundError:
        unlink_quiet(claimed.meta_path)
        return None
    except BaseException:
        unlink_quiet(claimed.meta_path)
        raise
    # The inbox is writable by submitters: the entry may have been swapped between lstat and
    # rename. work/ is ours, so one more lstat settles it.
    st2 = os.lstat(claimed.work_path)
    if not stat.S_ISREG(st2.st_mode):
        unlink_quiet(claimed.meta_path)
        with Dir.root(settings.work) as work:
            reject_non_regular(settings, work, claimed.work_path.name, st2, display_name=name)
        return None
    log.debug("claimed %s as work/%s", name, claimed.work_path.name)
    return claimed


def mark_started(settings: Settings, claimed: Claimed) -> Claimed:
    """Record that the job is about to run (attempts + 1, running); call before generation so a
    crash during it is blamed on this job."""
    updated = replace(claimed, attempts=claimed.attempts + 1, running=True)
    write_meta(updated)
    return updated


def mark_requeued(settings: Settings, claimed: Claimed) -> Claimed:
    """The job stopped without a crash (SIGTERM, OOM split retry later): not blamed at recovery."""
    updated = replace(claimed, running=False)
    write_meta(updated)
    return updated


def list_claims(settings: Settings) -> list[dict[str, Any]]:
    """Claim records of every job in work/ (any owner), for `status`."""
    out = []
    try:
        names = sorted(os.listdir(settings.work))
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(".") and name.endswith(".meta.json"):
            meta = load_meta(settings.work / name)
            if meta and (settings.work / f"{name[1 : -len('.meta.json')]}.yaml").exists():
                out.append(meta)
    return out


def complete_job(settings: Settings, claimed: Claimed, job_ids: Iterable[str] = ()) -> None:
    """The job file's outcomes are all on disk: drop the work file and its claim record, and
    release the given reserved ids."""
    unlink_quiet(claimed.work_path)
    unlink_quiet(claimed.meta_path)
    folder = source_folder(claimed.source_name)
    for job_id in job_ids:
        release_id(settings, job_id, folder)
