"""Retention: whole results older than `retention_days` leave outbox/ and failed/.

A result is its sidecar and the job's own audio beside it; a failure is `<id>.error.json` and
`<id>.yaml`. The audio removed is what the sidecar lists *and* what the names rule gives the job
(`<id>.<ext>`, `<id>-v<N>.<ext>`, jobspec.names.is_own_audio): a sidecar is only a file, and one
naming another job's result must not get that result deleted. Age is the sidecar's mtime (it is
written last, when the job finished). The sidecar goes first, so a reader never finds a sidecar
whose audio is gone; then its files. Folders are opened and entries removed relative to
descriptors, never through a link (daemon.spool.nofollow). Never touched: ids that a job in
flight holds (state/reserved/, per folder), files a queued or running job reads (`protected`, names relative
to outbox/), the page, dot-files (temps), and audio without a sidecar (an interrupted job's,
which recovery owns).
"""

from __future__ import annotations

import contextlib
import json
import logging
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from daemon.spool.nofollow import Dir, open_below, subfolders
from daemon.spool.reserve import reservation_name
from jobspec.names import is_own_audio

log = logging.getLogger(__name__)

DAY_S = 86400.0
MAX_SIDECAR_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Expired:
    where: str  # "outbox" or "failed", with the subfolder: "outbox/band"
    job_id: str
    root: Path  # outbox/ or failed/
    folder: str  # "" or the per-inbox-folder subfolder below root
    sidecar: str
    files: tuple[str, ...]  # removed after the sidecar, from the same folder
    age_days: float


def _result_files(folder: Dir, sidecar: str, job_id: str) -> list[str] | None:
    """The job's own audio that its sidecar lists (None when the sidecar cannot be read: left alone)."""
    try:
        body = json.loads(folder.read_bytes(sidecar, MAX_SIDECAR_BYTES))
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    files = []
    for o in body.get("outputs") or []:
        name = PurePosixPath(str(o.get("path", "")) if isinstance(o, dict) else "").name
        if is_own_audio(job_id, name) and name not in files:
            files.append(name)
    return files


def find_expired(
    outbox: Path,
    failed: Path,
    *,
    max_age_days: float,
    now: float,
    reserved: Iterable[str] = (),
    protected: Iterable[str] = (),
) -> list[Expired]:
    cutoff = now - max_age_days * DAY_S
    held = set(reserved)
    keep = {str(PurePosixPath(p)) for p in protected}
    found: list[Expired] = []
    for base, root, suffix in (("outbox", outbox, ".json"), ("failed", failed, ".error.json")):
        for folder in ["", *subfolders(root)]:
            try:
                directory = open_below(root, [folder] if folder else [])
            except OSError:
                continue
            with directory:
                found += _expired_in(directory, base, root, folder, suffix, cutoff, now, held, keep)
    return found


def _expired_in(
    directory: Dir,
    base: str,
    root: Path,
    folder: str,
    suffix: str,
    cutoff: float,
    now: float,
    held: set[str],
    keep: set[str],
) -> list[Expired]:
    found = []
    try:
        entries = list(directory.entries())
    except OSError:
        return []
    for name, st in entries:
        if name.startswith(".") or not name.endswith(suffix):
            continue
        if base == "outbox" and name.endswith(".error.json"):
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_mtime >= cutoff:
            continue
        job_id = name[: -len(suffix)]
        if reservation_name(job_id, folder) in held:
            continue
        if base == "outbox":
            files = _result_files(directory, name, job_id)
            if files is None:
                continue
            rel = {str(PurePosixPath(folder, f)) if folder else f for f in files}
            if rel & keep:
                continue
        else:
            files = [f"{job_id}.yaml"]
        where = f"{base}/{folder}" if folder else base
        found.append(Expired(where, job_id, root, folder, name, tuple(files), (now - st.st_mtime) / DAY_S))
    return found


def remove_expired(expired: Iterable[Expired]) -> int:
    """Remove each result (sidecar first, then its files); returns how many went."""
    n = 0
    for x in expired:
        try:
            directory = open_below(x.root, [x.folder] if x.folder else [])
        except OSError:
            continue  # the folder went (or became a link): nothing of ours to remove there
        with directory:
            try:
                directory.unlink(x.sidecar)
            except FileNotFoundError:
                continue  # another daemon on the spool took it
            gone = [x.sidecar]
            for f in x.files:
                with contextlib.suppress(FileNotFoundError):
                    directory.unlink(f)
                    gone.append(f)
        n += 1
        log.info("retention: removed %s/{%s} (finished %.1f days ago)", x.where, ", ".join(gone), x.age_days)
    return n
