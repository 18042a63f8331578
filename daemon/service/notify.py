"""sd_notify(3) for `Type=notify`: READY, STATUS, WATCHDOG, STOPPING, RELOADING, EXTEND_TIMEOUT.

Outside systemd (no NOTIFY_SOCKET) every method is a no-op, so the daemon calls them
unconditionally. `systemd.daemon.service.notify` (libsystemd) is used when systemd-python is
importable; otherwise a datagram is sent by hand, which is all sd_notify does for the
socket kinds we meet (a path, or '@' for the abstract namespace).

There is deliberately no timer thread: the daemon calls `watchdog()` from its idle loop and
from every decoding step, so a generation that stops making progress stops the pings and
systemd restarts the service (WatchdogSec=). Pings are rate-limited to one per
interval/4, which makes calling `watchdog()` on every step cheap.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Literal

log = logging.getLogger(__name__)

Backend = Literal["auto", "systemd", "socket"]

try:  # systemd-python is a Linux-only dependency; the fallback covers its absence.
    from systemd import daemon as _sd_daemon
except ImportError:  # pragma: no cover - exercised where systemd-python is missing
    _sd_daemon = None


class NotifyError(Exception):
    """The notification socket named by NOTIFY_SOCKET cannot be used."""


def _monotonic_usec() -> int:
    # RELOADING=1 must carry CLOCK_MONOTONIC (not Python's monotonic, which may differ on
    # some platforms) so systemd can tell this reload apart from a later one.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval_from_env(
    env: Mapping[str, str] | None = None, *, pid: int | None = None
) -> float | None:
    """WatchdogSec= as seconds, or None when the watchdog is off or meant for another process.

    Mirrors sd_watchdog_enabled(3): WATCHDOG_USEC must be a positive integer, and when
    WATCHDOG_PID is set it must be this process (a child must not ping for its parent).
    """
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    if usec <= 0:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid:
        try:
            if int(wpid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            log.warning("ignoring WATCHDOG_PID=%r: not an integer", wpid)
            return None
    return usec / 1_000_000


class _SocketSender:
    """What sd_notify does, for a NOTIFY_SOCKET that is a path or an abstract name."""

    def __init__(self, address: str) -> None:
        if address.startswith("@"):
            self._address: str | bytes = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        else:
            # vsock: and other kinds are for VMs; a GPU daemon never runs that way.
            raise NotifyError(f"NOTIFY_SOCKET={address!r}: only a path or an '@abstract' name is supported")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def __call__(self, message: str) -> bool:
        self._sock.sendto(message.encode("utf-8"), self._address)
        return True

    def close(self) -> None:
        self._sock.close()


class Notifier:
    """One per daemon process; safe to call from the main loop and the worker thread."""

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        backend: Backend = "auto",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if env is None else env
        self._clock = clock
        self._lock = threading.Lock()
        self._last_status: str | None = None
        self._last_ping: float | None = None
        self._warned = False
        self._socket_sender: _SocketSender | None = None
        self._watchdog_s = watchdog_interval_from_env(env)
        address = env.get("NOTIFY_SOCKET") or None
        self.backend: Literal["none", "systemd", "socket"]
        if address is None:
            self.backend = "none"
            self._send: Callable[[str], bool] = lambda _msg: False
        elif backend == "systemd" or (
            backend == "auto" and _sd_daemon is not None and address == os.environ.get("NOTIFY_SOCKET")
        ):
            if _sd_daemon is None:
                raise NotifyError("backend 'systemd' asked for, but systemd-python is not installed")
            if address != os.environ.get("NOTIFY_SOCKET"):
                # libsystemd reads the process environment, not our mapping.
                raise NotifyError(
                    "backend 'systemd' sends to the process's NOTIFY_SOCKET, not the env= one given"
                )
            self.backend = "systemd"
            self._send = _sd_daemon.notify  # reads NOTIFY_SOCKET from the real environment
        else:
            self.backend = "socket"
            self._socket_sender = _SocketSender(address)
            self._send = self._socket_sender

    @property
    def enabled(self) -> bool:
        return self.backend != "none"

    def _notify(self, *lines: str) -> bool:
        if not self.enabled:
            return False
        message = "\n".join(lines)
        try:
            sent = bool(self._send(message))
        except OSError as exc:
            # systemd gone or the socket unreachable: the daemon's work is still worth
            # doing, so log (once, to keep the journal readable) and carry on.
            if not self._warned:
                log.warning("cannot notify systemd via NOTIFY_SOCKET (%s); continuing without it", exc)
                self._warned = True
            return False
        return sent

    @staticmethod
    def _status_line(text: str) -> str:
        # A newline would start a new (bogus) assignment in the datagram.
        return "STATUS=" + " ".join(text.splitlines())

    def _with_status(self, first: list[str], status: str | None) -> list[str]:
        if status is not None:
            first.append(self._status_line(status))
            self._last_status = status
        return first

    def ready(self, status: str | None = None) -> bool:
        """READY=1: the model is loaded and warmed (or a reload has finished)."""
        with self._lock:
            return self._notify(*self._with_status(["READY=1"], status))

    def status(self, text: str) -> bool:
        """STATUS=text, sent only when it differs from the last one (called on every step)."""
        with self._lock:
            if text == self._last_status:
                return False
            self._last_status = text
            return self._notify(self._status_line(text))

    def stopping(self, status: str | None = None) -> bool:
        with self._lock:
            return self._notify(*self._with_status(["STOPPING=1"], status))

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (systemd >= 253 needs it to match the reload)."""
        with self._lock:
            lines = ["RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}"]
            return self._notify(*self._with_status(lines, status))

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: keep TimeoutStartSec/TimeoutStopSec from firing during slow work.

        systemd allows `seconds` more from now; send it again before that runs out.
        """
        if seconds <= 0:
            raise ValueError("extend_timeout needs a positive number of seconds")
        with self._lock:
            return self._notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog_interval(self) -> float | None:
        """WatchdogSec= in seconds, None when the watchdog is off."""
        return self._watchdog_s

    def watchdog(self) -> bool:
        """WATCHDOG=1, at most once per interval/4; True when a ping went out."""
        if self._watchdog_s is None or not self.enabled:
            return False
        with self._lock:
            now = self._clock()
            if self._last_ping is not None and now - self._last_ping < self._watchdog_s / 4:
                return False
            self._last_ping = now
            return self._notify("WATCHDOG=1")

    def set_watchdog_timeout(self, seconds: float | None) -> bool:
        """Change WatchdogSec= at runtime (WATCHDOG_USEC=), None to go back to the unit's value.

        For work that cannot ping (a blocking model load during a reload or after an idle
        unload): raise the timeout before, restore it after. Sent with a ping, because
        systemd measures the new timeout from the last ping.
        """
        if self._watchdog_s is None or not self.enabled:
            return False
        target = self._watchdog_s if seconds is None else seconds
        if target <= 0:
            raise ValueError("the watchdog timeout must be positive")
        with self._lock:
            self._last_ping = self._clock()
            return self._notify("WATCHDOG=1", f"WATCHDOG_USEC={int(target * 1_000_000)}")

    def close(self) -> None:
        if self._socket_sender is not None:
            self._socket_sender.close()
            self._socket_sender = None
