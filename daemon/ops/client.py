"""The spool seen from outside the daemon: dropping jobs, waiting for their sidecars, reading
the queue and state files. Used by `submit`, `status`, `cancel` and `demo`; it never imports
torch, so these commands start fast.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.core.config import Settings
from daemon.core.errors import InvalidJobError
from daemon.core.fsio import atomic_write_bytes
from daemon.spool import state
from daemon.spool.claim import list_claims
from daemon.spool.library import resolve_reference
from daemon.spool.owner import Owner
from daemon.spool.peers import Peers
from jobspec import ErrorDetail, Job, load_job_bytes
from jobspec.loader import locate_field
from jobspec.names import JOB_SUFFIXES


class SubmitError(Exception):
    """The job could not be dropped into the inbox (missing spool, permissions)."""


@dataclass(frozen=True)
class Submitted:
    source: Path  # the user's file
    inbox_name: str  # the name it got in the inbox
    jobs: list[Job]
    dropped_at: float


def validate_file(settings: Settings, path: Path) -> list[Job]:
    """Raises JobSpecError (invalid) or OSError (unreadable)."""
    with open(path, "rb") as fh:
        data = fh.read(settings.max_job_bytes + 1)
    return load_job_bytes(
        data, path.name, max_bytes=settings.max_job_bytes, max_duration=settings.max_duration
    )


def reference_problems(settings: Settings, path: Path, jobs: list[Job]) -> list[ErrorDetail]:
    """What the daemon would refuse about the jobs' library/ audio (`continue_from`, `melody`:
    missing, a link, not audio, too long), found now instead of at run time. Only where this user
    can read library/: elsewhere the daemon alone can tell. An outbox/ reference may name the
    result of a job submitted with it, not written yet: the daemon judges those when they run."""
    data = b""
    problems: list[ErrorDetail] = []
    for index, job in enumerate(jobs):
        for field in ("continue_from", "melody"):
            ref = getattr(job, field, None)
            if not isinstance(ref, str) or not ref.startswith("library/"):
                continue
            if not os.access(settings.library, os.R_OK | os.X_OK):
                continue
            try:
                resolve_reference(settings, field, ref)
            except InvalidJobError as exc:
                target = settings.spool / ref
                if target.exists() and not os.access(target, os.R_OK):
                    continue  # unreadable to this user only, perhaps: the daemon's group may read it
                data = data or path.read_bytes()
                loc, line = locate_field(data, path.name, index, field)
                problems.append(ErrorDetail(loc=loc, line=line, msg=exc.message, hint=exc.hint))
    return problems


def drop(settings: Settings, path: Path, jobs: list[Job]) -> Submitted:
    """Copy `path` into the inbox atomically (dot-temp, fsync, no-clobber rename).

    An inbox name that is taken gets `-2`, `-3` ... before the extension; jobs without an
    explicit `id` take their id from the file name, so the reported jobs follow the new name.
    """
    inbox = settings.inbox
    if not inbox.is_dir():
        raise SubmitError(
            f"{inbox} does not exist: is the spool right (`spool:` in the config) and the daemon installed?"
        )
    data = path.read_bytes()
    stem, suffix = path.stem, path.suffix.lower()
    if suffix not in JOB_SUFFIXES:
        suffix = ".yaml"
    for n in range(1, 10_000):
        name = f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}"
        try:
            atomic_write_bytes(inbox / name, data, create_new=True, mode=0o664)
        except FileExistsError:
            continue
        except PermissionError as exc:
            raise SubmitError(
                f"cannot write to {inbox}: {exc.strerror} (are you in the dgx-music-submit group?)"
            ) from exc
        _announce(inbox / name)
        if name != path.name:
            jobs = load_job_bytes(
                data, name, max_bytes=settings.max_job_bytes, max_duration=settings.max_duration
            )
        return Submitted(source=path, inbox_name=name, jobs=jobs, dropped_at=time.time())
    raise SubmitError(f"too many files named {stem}* waiting in {inbox}")


def _announce(path: Path) -> None:
    # The no-clobber publish is link() + unlink(temp): inotify reports only IN_CREATE for the
    # new name, which the daemon ignores (it also fires for half-written files), so the job
    # would wait for a rescan. Opening it for writing and closing it (no bytes written) emits
    # the close-write the daemon listens for.
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC))
    except FileNotFoundError:
        pass  # already claimed by a daemon: nothing to announce


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None  # gone, or being replaced: the next poll sees it
    return data if isinstance(data, dict) else None


def find_results(settings: Settings, sub: Submitted) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Sidecars (result or error) that belong to this submission, by job id."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for job in sub.jobs:
        for folder, pattern in (
            (settings.outbox, f"{job.id}*.json"),
            (settings.failed, f"{job.id}*.error.json"),
        ):
            for p in folder.glob(pattern):
                if folder == settings.outbox and p.name.endswith(".error.json"):
                    continue
                try:
                    if p.stat().st_mtime < sub.dropped_at - 2:
                        continue  # an older result of an earlier submission with the same name
                except FileNotFoundError:
                    continue
                body = _read_sidecar(p)
                if body and body.get("source_file") == sub.inbox_name and body.get("job_id") not in found:
                    found[str(body["job_id"])] = (p, body)
    return found


def expected_results(sub: Submitted) -> int:
    return len(sub.jobs)


STALE_STATE_S = 30.0  # a serving daemon rewrites its queue file every second


def _alive(entry: Mapping[str, Any], now: float) -> bool:
    """A daemon's state file still describes a live daemon: its pid exists (same host), and the
    file is fresh (any host: a dead peer on another machine cannot be asked by pid)."""
    updated = entry.get("updated")
    if isinstance(updated, str):
        try:
            age = now - datetime.fromisoformat(updated.replace("Z", "+00:00")).timestamp()
        except ValueError:
            age = 0.0
        if age > STALE_STATE_S:
            return False
    if entry.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(entry.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def serving_daemons(settings: Settings) -> list[dict[str, Any]]:
    """Queue snapshots of the daemons serving the spool now (each keeps one, empty when idle)."""
    now = time.time()
    return [q for q in state.read_queues(settings) if _alive(q, now)]


def live_running(settings: Settings) -> list[dict[str, Any]]:
    return [r for r in state.read_running(settings) if _alive({**r, "updated": None}, time.time())]


@dataclass(frozen=True)
class WaitProgress:
    """Where a submission stands: `eta_s` is the daemon's estimate for its last job (None when
    the daemon has none yet, or a job is being written), `note` says where each job is."""

    done: int
    total: int
    fraction: float  # of the whole submission, 0..1, never less than at the last tick
    eta_s: float | None
    note: str
    state: str = ""  # the note without figures that change every poll, e.g. "generating 2"


# A job's stages in the order it goes through them; a job never goes back to an earlier one.
WAITING, QUEUED, GENERATING, WRITING, DONE = range(5)
_GENERATED_SHARE = 0.9  # of a job's bar: the decode; the rest is writing its files


def _same_job(daemon_id: object, job_id: str) -> bool:
    # The daemon gives a taken id `-2`, `-3` ...: the submitted id is its prefix.
    return isinstance(daemon_id, str) and (daemon_id == job_id or daemon_id.startswith(job_id + "-"))


class SubmissionTracker:
    """Follows every job of a submission through waiting -> queued -> generating -> writing ->
    done, from the state files and sidecars only. A job that was generating and is now neither
    running nor queued nor finished is being written (the daemon has handed it to its writer)."""

    def __init__(self, settings: Settings, subs: list[Submitted]) -> None:
        self.settings = settings
        self.subs = subs
        self.stage: dict[tuple[str, str], int] = {(s.inbox_name, j.id): WAITING for s in subs for j in s.jobs}
        self.fraction = 0.0

    def tick(self, finished: Mapping[str, tuple[Path, dict[str, Any]]]) -> WaitProgress:
        running: dict[tuple[str, str], tuple[float, float | None]] = {}
        for r in live_running(self.settings):
            ids = r.get("batch") or [r.get("job_id")]
            sources = r.get("sources") or [r.get("source_file")] * len(ids)
            eta = r.get("eta_s")
            for source, jid in zip(sources, ids):
                running[(str(source), str(jid))] = (
                    float(r.get("percent") or 0.0) / 100.0,
                    float(eta) if isinstance(eta, (int, float)) else None,
                )
        daemons = serving_daemons(self.settings)
        queued: dict[tuple[str, str], tuple[int, float | None]] = {}
        for q in daemons:
            for e in q.get("queued", []):
                eta = e.get("eta_s")
                queued[(str(e.get("source_file")), str(e.get("job_id")))] = (
                    int(e.get("position") or 0),
                    float(eta) if isinstance(eta, (int, float)) else None,
                )
        done_keys = {tuple(k.split(":", 1)) for k in finished}
        in_inbox = {s.inbox_name for s in self.subs if (self.settings.inbox / s.inbox_name).exists()}
        shares: list[float] = []
        percents: list[float] = []
        positions: list[int] = []
        etas: list[float | None] = []
        for (source, job_id), before in self.stage.items():
            run = next(
                (v for (src, jid), v in running.items() if src == source and _same_job(jid, job_id)), None
            )
            wait = next(
                (v for (src, jid), v in queued.items() if src == source and _same_job(jid, job_id)), None
            )
            if any(src == source and _same_job(jid, job_id) for src, jid in done_keys):
                now = DONE
            elif run is not None:
                now = GENERATING
            elif wait is not None:
                now = QUEUED
            elif source in in_inbox:
                now = WAITING
            else:  # picked up: between the claim and the queue, or written after its decode
                now = WRITING if before >= GENERATING else QUEUED
            stage = self.stage[(source, job_id)] = max(before, now)
            if stage == GENERATING and run is not None:
                percents.append(run[0])
                etas.append(run[1])
                shares.append(_GENERATED_SHARE * run[0])
            elif stage == QUEUED and wait is not None:
                positions.append(wait[0])
                etas.append(wait[1])
                shares.append(0.0)
            else:
                shares.append({DONE: 1.0, WRITING: _GENERATED_SHARE}.get(stage, 0.0))
        counts = [sum(1 for v in self.stage.values() if v == k) for k in range(5)]
        total = len(self.stage)
        parts: list[str] = []
        states: list[str] = []
        if counts[WRITING]:
            parts.append(f"writing {counts[WRITING]}")
        if counts[GENERATING]:
            mean = sum(percents) / len(percents) if percents else 0.0
            parts.append(f"generating {counts[GENERATING]} ({mean * 100:.0f}%)")
        if counts[QUEUED]:
            at = f" (#{min(positions)})" if positions else ""
            parts.append(f"queued {counts[QUEUED]}{at}")
        if counts[WAITING]:
            where = "waiting for a daemon to pick it up" if daemons else "no daemon is serving the spool"
            parts.append(f"{where} ({counts[WAITING]})" if total > 1 else where)
        for k, word in (
            (WRITING, "writing"),
            (GENERATING, "generating"),
            (QUEUED, "queued"),
            (WAITING, "waiting"),
        ):
            if counts[k]:
                # A queue position is news too (a line of its own off a terminal); percentages are not.
                at = f" #{min(positions)}" if k == QUEUED and positions else ""
                states.append(f"{word} {counts[k]}{at}")
        self.fraction = max(self.fraction, sum(shares) / total if total else 1.0)
        if counts[DONE] == total:
            self.fraction = 1.0
        # The daemon's ETA for the last of them; none while one has no estimate (or is being written).
        unknown = counts[WAITING] or counts[WRITING] or any(e is None for e in etas)
        eta_s = None if unknown or not etas else max(e for e in etas if e is not None)
        return WaitProgress(
            counts[DONE],
            total,
            self.fraction,
            eta_s,
            ", ".join(parts),
            f"{counts[DONE]} done, " + ", ".join(states),
        )


def wait_for(
    settings: Settings,
    subs: list[Submitted],
    *,
    timeout_s: float | None,
    on_tick: Callable[[WaitProgress], None] | None = None,
    poll_s: float = 0.2,
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Block until every job of `subs` has a sidecar (or the timeout). Returns what was found."""
    total = sum(expected_results(s) for s in subs)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    results: dict[str, tuple[Path, dict[str, Any]]] = {}
    tracker = SubmissionTracker(settings, subs)
    while True:
        for sub in subs:
            results.update({f"{sub.inbox_name}:{k}": v for k, v in find_results(settings, sub).items()})
        if on_tick is not None:
            on_tick(tracker.tick(results))
        if len(results) >= total:
            return results
        if deadline is not None and time.monotonic() >= deadline:
            return results
        time.sleep(poll_s)


def spool_counts(settings: Settings) -> dict[str, int]:
    def count(folder: Path, pred: Callable[[str], bool]) -> int:
        try:
            return sum(1 for n in os.listdir(folder) if pred(n))
        except FileNotFoundError:
            return 0
        except PermissionError:
            return -1

    try:
        claimed = len(list_claims(settings))
    except PermissionError:
        claimed = -1  # work/ is the daemon's alone: a submitter sees the queue in state/ instead
    return {
        "inbox": count(settings.inbox, lambda n: not n.startswith(".") and n.lower().endswith(JOB_SUFFIXES)),
        "work": claimed,
        "outbox": count(settings.outbox, lambda n: n.endswith(".json") and not n.startswith(".")),
        "failed": count(settings.failed, lambda n: n.endswith(".error.json") and not n.startswith(".")),
    }


def daemons_report(settings: Settings) -> list[dict[str, Any]]:
    """Every daemon that keeps a heartbeat in state/ (any host): who, where, and whether it lives.

    `state`: live (heartbeat younger than peer_timeout_s), stale (older: peers take over its
    jobs), stopped (it stopped cleanly). A daemon on this host is judged by /proc as well."""
    try:
        peers = Peers(settings)
    except OSError:
        return []
    out = []
    for hb in peers.heartbeats:
        if hb.get("stopped"):
            verdict = "stopped"
        elif not peers.live(hb):
            verdict = "stale"
        else:
            owner = Owner.from_json(hb)
            verdict = "live" if peers.alive(owner) else "dead"
        out.append(
            {
                "instance": hb.get("instance"),
                "host": hb.get("host"),
                "pid": hb.get("pid"),
                "slurm_job_id": hb.get("slurm_job_id"),
                "slurm_array": hb.get("slurm_array"),
                "device": hb.get("device"),
                "started": hb.get("started"),
                "heartbeat_age_s": round(peers.age(hb), 1),
                "state": verdict,
                "phase": hb.get("phase"),
            }
        )
    return out


def serving_outlook(settings: Settings) -> tuple[str, dict[str, Any] | None]:
    """Whether a job dropped now will be picked up: ("serving", None), or ("loading" | "stopping",
    that daemon) when the only daemons are loading their model or stopping, else ("none", None).

    A loading daemon beats no heartbeat while a large checkpoint loads: on this host its pid
    says it is alive."""
    phases: dict[str, dict[str, Any]] = {}
    for d in daemons_report(settings):
        phase = d.get("phase") or "serving"
        alive = d["state"] == "live" or (
            phase == "loading" and d["state"] == "stale" and _alive({**d, "updated": None}, time.time())
        )
        if alive:
            phases.setdefault(phase, d)
    if "serving" in phases or (
        "stopping" not in phases and "loading" not in phases and serving_daemons(settings)
    ):
        return "serving", None
    for phase in ("loading", "stopping"):
        if phase in phases:
            return phase, phases[phase]
    return "none", None


def status_report(settings: Settings) -> dict[str, Any]:
    """Everything `dgx-music status` shows, as one JSON-able dict."""
    queues = serving_daemons(settings)
    return {
        "spool": str(settings.spool),
        "counts": spool_counts(settings),
        "daemons": daemons_report(settings),
        "running": live_running(settings),
        "queued": queues,
        "recent": state.read_recent(settings)[-10:],
    }
