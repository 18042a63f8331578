"""Retention: whole results older than `retention_days` leave outbox/ and failed/.

A result is its sidecar and the files it names (audio next to it); a failure is
`<id>.error.json` and `<id>.yaml`. Age is the sidecar's mtime (it is written last, when the job
finished). The sidecar goes first, so a reader never finds a sidecar whose audio is gone; then
its files. Never touched: ids that a job in flight holds (state/reserved/), files a queued or
running job reads (`protected`, names relative to outbox/), the page, dot-files (temps), and
audio without a sidecar (an interrupted job's, which recovery owns).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from daemon.spool.reserve import result_folders

log = logging.getLogger(__name__)

DAY_S = 86400.0


@dataclass(frozen=True)
class Expired:
    where: str  # "outbox" or "failed", with the subfolder: "outbox/band"
    job_id: str
    sidecar: Path
    files: tuple[Path, ...]  # removed after the sidecar
    age_days: float


def _result_files(sidecar: Path) -> list[Path] | None:
    """The audio a result sidecar names (None when the sidecar cannot be read: left alone)."""
    try:
        body = json.loads(sidecar.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    files = []
    for o in body.get("outputs") or []:
        name = PurePosixPath(str(o.get("path", "")) if isinstance(o, dict) else "").name
        if name and not name.startswith(".") and name != sidecar.name:
            files.append(sidecar.parent / name)
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
        for folder, directory in result_folders(root):
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for e in entries:
                name = e.name
                if name.startswith(".") or not name.endswith(suffix):
                    continue
                if base == "outbox" and name.endswith(".error.json"):
                    continue
                try:
                    if not e.is_file(follow_symlinks=False) or e.stat().st_mtime >= cutoff:
                        continue
                    age = (now - e.stat().st_mtime) / DAY_S
                except OSError:
                    continue
                job_id = name[: -len(suffix)]
                if job_id in held:
                    continue
                sidecar = Path(e.path)
                if base == "outbox":
                    files = _result_files(sidecar)
                    if files is None:
                        continue
                    rel = {str(PurePosixPath(folder, f.name)) if folder else f.name for f in files}
                    if rel & keep:
                        continue
                else:
                    files = [directory / f"{job_id}.yaml"]
                where = f"{base}/{folder}" if folder else base
                found.append(Expired(where, job_id, sidecar, tuple(files), age))
    return found


def remove_expired(expired: Iterable[Expired]) -> int:
    """Remove each result (sidecar first, then its files); returns how many went."""
    n = 0
    for x in expired:
        try:
            os.unlink(x.sidecar)
        except FileNotFoundError:
            continue  # another daemon on the spool took it
        gone = [x.sidecar.name]
        for f in x.files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f)
                gone.append(f.name)
        n += 1
        log.info("retention: removed %s/{%s} (finished %.1f days ago)", x.where, ", ".join(gone), x.age_days)
    return n
