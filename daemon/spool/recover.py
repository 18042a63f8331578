"""Crash recovery: jobs left in work/ by dead daemons are taken over, with their crash count."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.core.config import Settings
from daemon.core.fsio import TEMP_SUFFIX
from daemon.spool.layout import unlink_quiet
from daemon.spool.nofollow import open_below, subfolders
from daemon.spool.owner import Owner, current_owner
from daemon.spool.peers import OBSERVED, Observations, Peers
from daemon.spool.records import Claimed, load_meta, meta_file, new_token, token_stem, write_meta
from daemon.spool.reserve import clean_reservations

log = logging.getLogger(__name__)


def recover(
    settings: Settings,
    *,
    max_attempts: int | None = None,
    orphan_grace_s: float = 60.0,
    observed: Observations | None = None,
) -> list[Claimed]:
    """Take over jobs left in work/ by daemons that died; safe to call at any time, from several
    daemons at once. Returns them oldest claim first; `crashed` is set on those that crashed their
    daemon `max_attempts` times (default: settings.max_attempts) and must be failed as `crashed`.

    Also removes claim records and id reservations that belong to no job and no live owner.
    `observed`: what this process saw of peers' heartbeats over time (default: the daemon's own,
    daemon.spool.peers.OBSERVED).
    """
    limit = settings.max_attempts if max_attempts is None else max_attempts
    me = current_owner()
    now = time.time()
    try:
        entries = list(os.scandir(settings.work))
    except FileNotFoundError:
        return []
    work_files = {
        e.name[: -len(".yaml")]: e for e in entries if not e.name.startswith(".") and e.name.endswith(".yaml")
    }
    meta_names = {e.name for e in entries if e.name.startswith(".") and e.name.endswith(".meta.json")}
    # After the listing (see Peers): owners here by /proc, owners on other nodes by heartbeat.
    peers = Peers(settings, me=me, now=now, observed=OBSERVED if observed is None else observed)
    seen_claims: set[str] = set()

    recovered: list[Claimed] = []
    live_claims: set[str] = set()
    for token, entry in sorted(work_files.items()):
        meta_path = meta_file(settings, token)
        meta = load_meta(meta_path)
        if meta is None:
            # A work file without a meta never belongs to a claim in progress (meta goes first);
            # still, give a foreign tool that moved it here a grace period.
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if now - st.st_ctime < orphan_grace_s:
                continue
            meta = {
                "source_name": f"{token_stem(token)}.yaml",
                "submitted_at": st.st_mtime,
                "claimed_at": st.st_ctime,
            }
        owner_data = meta.get("owner")
        if owner_data:
            owner = Owner.from_json(owner_data)
            claim_id = str(meta.get("claim_id") or token)
            seen_claims.add(claim_id)
            if peers.alive(owner, since=_float(meta.get("claimed_at")), claim=claim_id):
                if meta.get("claim_id"):
                    live_claims.add(str(meta["claim_id"]))
                continue
        taken = _take_over(settings, token, meta, me, limit)
        if taken is not None:
            recovered.append(taken)
            live_claims.add(taken.claim_id)

    # Every claim id still named by a meta file counts as live (a takeover in progress has both).
    for name in meta_names:
        data = load_meta(settings.work / name) or {}
        token = name[1 : -len(".meta.json")]
        owner_data = data.get("owner")
        claim_id = str(data.get("claim_id") or token)
        seen_claims.add(claim_id)
        if token in work_files or (
            owner_data
            and peers.alive(Owner.from_json(owner_data), since=_float(data.get("claimed_at")), claim=claim_id)
        ):
            if data.get("claim_id"):
                live_claims.add(str(data["claim_id"]))
            continue
        if token not in work_files and (settings.work / f"{token}.yaml").exists():
            continue  # created after our listing
        unlink_quiet(settings.work / name)  # orphan of a claim that lost its race or finished
    clean_reservations(settings, live_claims, me, alive=lambda o, since: peers.alive(o, since=_float(since)))
    peers.forget_stale()
    peers.keep_observing(seen_claims)
    recovered.sort(key=lambda c: c.claimed_at)
    return recovered


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _take_over(
    settings: Settings, token: str, meta: Mapping[str, Any], me: Owner, limit: int
) -> Claimed | None:
    running = bool(meta.get("running", False))
    crashes = int(meta.get("crashes", 0)) + (1 if running else 0)
    fresh = new_token(token_stem(token))
    claimed = Claimed(
        token=fresh,
        claim_id=str(meta.get("claim_id") or uuid.uuid4().hex),
        work_path=settings.work / f"{fresh}.yaml",
        meta_path=meta_file(settings, fresh),
        source_name=str(meta.get("source_name") or f"{token_stem(token)}.yaml"),
        submitted_at=float(meta.get("submitted_at") or time.time()),
        claimed_at=float(meta.get("claimed_at") or time.time()),
        attempts=int(meta.get("attempts", 0)),
        crashes=crashes,
        running=False,
        crashed=crashes >= limit,
        owner=me,
    )
    write_meta(claimed)
    try:
        os.rename(settings.work / f"{token}.yaml", claimed.work_path)
    except FileNotFoundError:
        unlink_quiet(claimed.meta_path)  # another daemon recovered it first
        return None
    unlink_quiet(meta_file(settings, token))
    log.warning(
        "recovered %s from work/ (attempts %d, crashes %d%s)",
        claimed.source_name,
        claimed.attempts,
        claimed.crashes,
        ", failing it as crashed" if claimed.crashed else "",
    )
    return claimed


def clean_stale_temps(settings: Settings, *, older_than_s: float = 600.0) -> list[Path]:
    """Remove dot-temps (`.<name>.<hex>.tmp`, see daemon.core.fsio) that a killed writer left in
    work/ outbox/ failed/ state/, and in the outbox/<folder>/ and failed/<folder>/ of jobs from
    inbox subfolders. A live writer touches its temp with every write, so one untouched for
    `older_than_s` is abandoned."""
    removed = []
    cutoff = time.time() - older_than_s
    folders: list[tuple[Path, list[str]]] = [(settings.work, []), (settings.state_dir, [])]
    for results in (settings.outbox, settings.failed):
        folders += [(results, [])] + [(results, [name]) for name in subfolders(results)]
    for root, parts in folders:
        try:
            directory = open_below(root, parts)
        except OSError:
            continue  # gone, or a link: never followed
        with directory:
            for name, st in list(directory.entries()):
                if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)) or st.st_mtime >= cutoff:
                    continue
                try:
                    directory.unlink(name)
                except FileNotFoundError:
                    continue
                removed.append(directory.path / name)
    return removed
