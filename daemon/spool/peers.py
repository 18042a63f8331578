"""Daemons on other machines sharing the spool: heartbeats in state/, and the liveness they give.

A daemon on this boot of this machine is judged exactly, through /proc (daemon.spool.owner).
Any other cannot be: instead every daemon keeps `state/daemon.<instance>.json` fresh

    {instance, host, pid, start_ticks, boot_id, pid_ns, started, heartbeat (UNIX time),
     heartbeat_at, beat (a counter), interval_s, device, slurm_job_id, version}

rewriting it every `heartbeat_interval_s` from the service's main loop (generation runs in
another thread, so a long job does not stop the beat); its last write, after the daemon handed
back what it held, adds `"stopped": true`, which frees its claims at once.

A heartbeat is judged by whether it *changes*, timed on the reader's own monotonic clock
(`Observations`): it is live while the reader saw its content change within the last
`peer_timeout_s`, and a heartbeat seen for the first time gets a whole timeout. The writer's time
stamp is never compared with the reader's clock, so a node whose clock runs ahead or behind
(a day, a year) is judged like any other, and a heartbeat that keeps changing is live whatever
host name it carries: a clone of this machine (same host name, another boot id) is a peer, not
an earlier boot of ours. A remote owner with no heartbeat at all is dead once this reader has
seen its claim for a timeout (a daemon writes its first heartbeat before it claims anything).
One-shot readers (`dgx-music status`) see each heartbeat once and estimate its age from the
time stamp instead; they only show it and take nothing over.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from daemon.core.config import Settings
from daemon.spool.layout import iso_utc
from daemon.spool.owner import Owner, current_owner, is_local, owner_alive
from daemon.spool.state import read_json, replace_json

PREFIX = "daemon."
# A heartbeat stale this many timeouts is removed by whichever peer sees it (its claims were
# taken over long before); status shows it as stale until then.
FORGET_AFTER_TIMEOUTS = 10


def heartbeat_path(settings: Settings, instance: str) -> Path:
    return settings.state_dir / f"{PREFIX}{instance}.json"


def slurm_context(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Slurm job this daemon runs in, if any (what `status` shows beside the host)."""
    env = os.environ if environ is None else environ
    out = {}
    if env.get("SLURM_JOB_ID"):
        out["slurm_job_id"] = env["SLURM_JOB_ID"]
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        out["slurm_array"] = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return out


class Heartbeat:
    """This daemon's state/daemon.<instance>.json: `beat()` rewrites it, `remove()` at stop."""

    def __init__(
        self,
        settings: Settings,
        instance: str,
        *,
        extra: Mapping[str, Any] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = heartbeat_path(settings, instance)
        self.interval_s = settings.heartbeat_interval_s
        self._wall = wall
        owner = current_owner()
        self._base: dict[str, Any] = {
            "instance": instance,
            **owner.to_json(),
            "started": iso_utc(wall()),
            "interval_s": settings.heartbeat_interval_s,
            "device": settings.device,
            **slurm_context(),
            **(extra or {}),
        }
        self.beats = 0

    def beat(self, phase: str | None = None) -> None:
        """`phase` (loading, serving, stopping) is kept for the next beats: `submit` tells a
        daemon that is loading its model or stopping from one that serves."""
        if phase is not None:
            self._base["phase"] = phase
        now = self._wall()
        # The counter changes the content even when the clock does not move (a stepped-back or
        # frozen clock): readers judge a heartbeat by change, not by its time stamp.
        replace_json(
            self.path, {**self._base, "heartbeat": now, "heartbeat_at": iso_utc(now), "beat": self.beats + 1}
        )
        self.beats += 1

    def stopped(self) -> None:
        """The last write: this daemon holds nothing any more, its claims are free now."""
        now = self._wall()
        replace_json(
            self.path,
            {
                **self._base,
                "heartbeat": now,
                "heartbeat_at": iso_utc(now),
                "beat": self.beats + 1,
                "stopped": True,
            },
        )


def read_heartbeats(settings: Settings) -> list[dict[str, Any]]:
    """Every daemon's heartbeat record (any host), oldest instance name first."""
    out = []
    for path in sorted(settings.state_dir.glob(f"{PREFIX}*.json")):
        if path.name.startswith("."):
            continue
        try:
            data = read_json(path)
        except (OSError, ValueError):
            continue  # unreadable right now (permissions, a torn NFS read): judged next time
        if isinstance(data, dict) and isinstance(data.get("heartbeat"), (int, float)):
            data["_path"] = str(path)
            out.append(data)
    return out


def _same_process(owner: Owner, hb: Mapping[str, Any]) -> bool:
    if hb.get("host") != owner.host or hb.get("pid") != owner.pid or hb.get("boot_id") != owner.boot_id:
        return False
    ticks = hb.get("start_ticks")
    return owner.start_ticks is None or ticks is None or ticks == owner.start_ticks


class Observations:
    """What one process saw of each heartbeat (and of each claim without one), timed on its own
    monotonic clock: how long a thing has stayed the same since this process first saw it so."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, tuple[object, float]] = {}
        self._lock = threading.Lock()

    def unchanged_for(self, key: str, signature: object) -> float:
        """Seconds since `key` was first seen with `signature` (0.0 now, when it is new or changed)."""
        now = self._clock()
        with self._lock:
            prev = self._seen.get(key)
            if prev is None or prev[0] != signature:
                self._seen[key] = (signature, now)
                return 0.0
            return now - prev[1]

    def keep_only(self, keys: set[str]) -> None:
        """Drop what is gone, so the map stays as small as the spool's state."""
        with self._lock:
            for key in [k for k in self._seen if k not in keys]:
                del self._seen[key]


# The daemon's own observations, kept across its recovery passes.
OBSERVED = Observations()


def _signature(hb: Mapping[str, Any]) -> tuple[object, ...]:
    return (hb.get("heartbeat"), hb.get("beat"), bool(hb.get("stopped")), hb.get("pid"), hb.get("boot_id"))


class Peers:
    """Liveness of claim owners, local ones by /proc, all others by heartbeat.

    Load it *after* listing work/: a claim seen in that listing was made after its owner's
    first heartbeat, so the heartbeat is there to be read. `observed`: the process's own record
    of what changed when (the daemon passes OBSERVED); without it (a one-shot reader) a
    heartbeat's age is estimated from its time stamp.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        me: Owner | None = None,
        now: float | None = None,
        observed: Observations | None = None,
    ) -> None:
        self.timeout_s = settings.peer_timeout_s
        self.me = me or current_owner()
        self.now = time.time() if now is None else now
        self.observed = observed
        self.heartbeats = read_heartbeats(settings)
        self._still: dict[str, float] = {}
        for hb in self.heartbeats:
            path = str(hb["_path"])
            if observed is None:
                self._still[path] = max(0.0, self.now - float(hb["heartbeat"]))
            else:
                self._still[path] = observed.unchanged_for(path, _signature(hb))

    def age(self, hb: Mapping[str, Any]) -> float:
        """Seconds the heartbeat has not changed (estimated from its time stamp by one-shot readers)."""
        return self._still.get(str(hb.get("_path")), 0.0)

    def live(self, hb: Mapping[str, Any]) -> bool:
        return not hb.get("stopped") and self.age(hb) <= self.timeout_s

    def alive(self, owner: Owner, *, since: float | None = None, claim: str | None = None) -> bool:
        """Whether `owner` may still be working on its claim; `since`: when the claim was made (by
        the claimer's clock), `claim`: its id, so a claim without a heartbeat is timed by this
        reader's own clock from when it first saw the claim."""
        me = self.me
        if is_local(owner, me):
            return owner_alive(owner, me=me)
        for hb in self.heartbeats:
            if _same_process(owner, hb):
                return self.live(hb)
        if owner.host == me.host and owner.boot_id and me.boot_id:
            return False  # our host name, another boot id, no heartbeat: an earlier boot of ours
        # No heartbeat: a daemon that never wrote one (an older version) or one that stopped and
        # removed it. A fresh claim may be of a daemon that just started: give it the timeout.
        if self.observed is not None and claim:
            return self.observed.unchanged_for(f"claim:{claim}", owner) < self.timeout_s
        return since is not None and self.now - since < self.timeout_s

    def keep_observing(self, claims: set[str]) -> None:
        """Forget observations of heartbeats and claims that are gone."""
        if self.observed is not None:
            keys = {str(hb["_path"]) for hb in self.heartbeats} | {f"claim:{c}" for c in claims}
            self.observed.keep_only(keys)

    def forget_stale(self) -> list[Path]:
        """Remove heartbeats unchanged for FORGET_AFTER_TIMEOUTS timeouts (long-dead daemons)."""
        removed = []
        for hb in self.heartbeats:
            if self.age(hb) > FORGET_AFTER_TIMEOUTS * self.timeout_s:
                path = Path(hb["_path"])
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
        return removed
