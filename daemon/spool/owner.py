"""Who holds a claim, and whether that process still lives (pid + start time + boot id + pid namespace)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Set only by the test harness's fault injection (daemon.service.faults): a daemon that reports
# another host name and boot id, i.e. looks like a daemon on another machine sharing the spool.
_identity_override: tuple[str, str] | None = None


def pretend_host(host: str | None) -> None:
    """Report `host` (and a boot id derived from it) instead of this machine's; None: the truth."""
    global _identity_override
    if host is None:
        _identity_override = None
        return
    import hashlib

    real = _read_text("/proc/sys/kernel/random/boot_id") or ""
    _identity_override = (host, hashlib.sha256(f"{host}\0{real}".encode()).hexdigest()[:36])


def host_name() -> str:
    """The host name this daemon records in claims and state files."""
    return _identity_override[0] if _identity_override else socket.gethostname()


@dataclass(frozen=True)
class Owner:
    """Who holds a claimed job. Enough to decide, on this host, whether that process still lives."""

    host: str
    pid: int
    start_ticks: int | None  # /proc/<pid>/stat field 22: tells a reused pid from the original
    boot_id: str | None
    pid_ns: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "boot_id": self.boot_id,
            "pid_ns": self.pid_ns,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Owner":
        return cls(
            host=str(data.get("host", "")),
            pid=int(data.get("pid", 0)),
            start_ticks=data.get("start_ticks"),
            boot_id=data.get("boot_id"),
            pid_ns=data.get("pid_ns"),
        )


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    raw = _read_text(f"/proc/{pid}/stat")
    if raw is None:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    try:
        return int(raw[raw.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _pid_ns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def current_owner() -> Owner:
    pid = os.getpid()
    return Owner(
        host=host_name(),
        pid=pid,
        start_ticks=_start_ticks(pid),
        boot_id=_identity_override[1]
        if _identity_override
        else _read_text("/proc/sys/kernel/random/boot_id"),
        pid_ns=_pid_ns(),
    )


def is_local(owner: Owner, me: Owner) -> bool:
    """True when `owner` ran on this boot of this machine, where /proc can judge it."""
    return bool(owner.boot_id and me.boot_id and owner.boot_id == me.boot_id)


def owner_alive(owner: Owner, *, me: Owner | None = None) -> bool:
    """False only when the owner is provably dead; an owner we cannot judge counts as alive.

    Owners on other machines count as alive here: daemon.spool.peers judges them by heartbeat."""
    me = me or current_owner()
    if not is_local(owner, me):
        # boot_id is random per boot: a different one under our hostname means we rebooted
        # since the claim; under another hostname it is another machine sharing the spool.
        return owner.host != me.host or not (owner.boot_id and me.boot_id)
    if owner.pid_ns and me.pid_ns and owner.pid_ns != me.pid_ns:
        return True  # another container on this machine: its pids mean nothing here
    if owner.pid <= 0:
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else; the start time decides below
    if owner.start_ticks is not None:
        ticks = _start_ticks(owner.pid)
        if ticks is not None and ticks != owner.start_ticks:
            return False  # the pid was reused by a younger process
    return True
