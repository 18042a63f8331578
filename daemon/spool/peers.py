"""Daemons on other machines sharing the spool: heartbeats in state/, and the liveness they give.

A daemon on this machine is judged exactly, through /proc (daemon.spool.owner). One on another
node cannot be: instead every daemon keeps `state/daemon.<instance>.json` fresh

    {instance, host, pid, start_ticks, boot_id, pid_ns, started, heartbeat (UNIX time),
     heartbeat_at, interval_s, device, slurm_job_id, version}

rewriting it every `heartbeat_interval_s` from the service's main loop (generation runs in
another thread, so a long job does not stop the beat); its last write, after the daemon handed
back what it held, adds `"stopped": true`, which frees its claims at once. A claim
whose owner ran elsewhere counts as alive while that owner's heartbeat is younger than
`peer_timeout_s`; then a peer takes it over like a crashed local one. A remote owner with no
heartbeat at all is dead once its claim is older than the timeout (a daemon writes its first
heartbeat before it claims anything). Ages compare the writer's clock with the reader's: the
nodes must keep their clocks in step (NTP/chrony, as Slurm and munge need anyway).
"""

from __future__ import annotations

import contextlib
import os
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
        replace_json(self.path, {**self._base, "heartbeat": now, "heartbeat_at": iso_utc(now)})
        self.beats += 1

    def stopped(self) -> None:
        """The last write: this daemon holds nothing any more, its claims are free now."""
        now = self._wall()
        replace_json(
            self.path, {**self._base, "heartbeat": now, "heartbeat_at": iso_utc(now), "stopped": True}
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


class Peers:
    """Liveness of claim owners, local ones by /proc, remote ones by heartbeat.

    Load it *after* listing work/: a claim seen in that listing was made after its owner's
    first heartbeat, so the heartbeat is there to be read.
    """

    def __init__(self, settings: Settings, *, me: Owner | None = None, now: float | None = None) -> None:
        self.timeout_s = settings.peer_timeout_s
        self.me = me or current_owner()
        self.now = time.time() if now is None else now
        self.heartbeats = read_heartbeats(settings)

    def age(self, hb: Mapping[str, Any]) -> float:
        return self.now - float(hb["heartbeat"])

    def live(self, hb: Mapping[str, Any]) -> bool:
        return not hb.get("stopped") and self.age(hb) <= self.timeout_s

    def alive(self, owner: Owner, *, since: float | None = None) -> bool:
        """Whether `owner` may still be working on its claim; `since`: when the claim was made."""
        me = self.me
        if is_local(owner, me):
            return owner_alive(owner, me=me)
        if owner.host == me.host and owner.boot_id and me.boot_id:
            return False  # our host name with another boot id: we rebooted since that claim
        for hb in self.heartbeats:
            if _same_process(owner, hb):
                return self.live(hb)
        # No heartbeat: a daemon that never wrote one (an older version) or one that stopped and
        # removed it. A fresh claim may be of a daemon that just started: give it the timeout.
        return since is not None and self.now - since < self.timeout_s

    def forget_stale(self) -> list[Path]:
        """Remove heartbeats stale for FORGET_AFTER_TIMEOUTS timeouts (long-dead remote daemons)."""
        removed = []
        for hb in self.heartbeats:
            if self.age(hb) > FORGET_AFTER_TIMEOUTS * self.timeout_s:
                path = Path(hb["_path"])
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
        return removed
