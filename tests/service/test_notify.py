"""sd_notify: a real datagram socket stands in for systemd; both senders are exercised."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.service import notify
from daemon.service.notify import Notifier, NotifyError, watchdog_interval_from_env

HAVE_SYSTEMD_PYTHON = notify._sd_daemon is not None
BACKENDS = [
    "socket",
    pytest.param(
        "systemd", marks=pytest.mark.skipif(not HAVE_SYSTEMD_PYTHON, reason="systemd-python not installed")
    ),
]


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, address: str, bind_to: str | bytes) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(2.0)

    def recv(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def pending(self) -> list[dict[str, str]]:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    data = self.sock.recv(4096).decode()
                except BlockingIOError:
                    return out
                out.append(dict(line.split("=", 1) for line in data.split("\n")))
        finally:
            self.sock.settimeout(2.0)


@pytest.fixture
def fake_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    path = str(tmp_path / "notify.sock")
    fake = FakeSystemd(path, path)
    # libsystemd reads the real environment, so set it there, not only in an env mapping.
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield fake
    fake.sock.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ready_status_stopping(fake_systemd: FakeSystemd, backend: str) -> None:
    n = Notifier(backend=backend)  # type: ignore[arg-type]
    assert n.backend == backend and n.enabled
    assert n.ready(status="idle, 0 queued")
    assert fake_systemd.recv() == {"READY": "1", "STATUS": "idle, 0 queued"}
    assert n.stopping()
    assert fake_systemd.recv() == {"STOPPING": "1"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_status_is_deduplicated(fake_systemd: FakeSystemd, backend: str) -> None:
    n = Notifier(backend=backend)  # type: ignore[arg-type]
    assert n.status("job abc 43% (3 queued)")
    assert not n.status("job abc 43% (3 queued)")  # same text: nothing sent
    assert n.status("job abc 44% (3 queued)")
    assert [m["STATUS"] for m in fake_systemd.pending()] == [
        "job abc 43% (3 queued)",
        "job abc 44% (3 queued)",
    ]
    # READY with a status counts as the last status too.
    n.ready(status="idle, 0 queued")
    assert not n.status("idle, 0 queued")
    assert len(fake_systemd.pending()) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_status_newlines_cannot_inject_assignments(fake_systemd: FakeSystemd, backend: str) -> None:
    n = Notifier(backend=backend)  # type: ignore[arg-type]
    n.status("loading\nREADY=1")
    assert fake_systemd.recv() == {"STATUS": "loading READY=1"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_reloading_carries_monotonic_usec(fake_systemd: FakeSystemd, backend: str) -> None:
    n = Notifier(backend=backend)  # type: ignore[arg-type]
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading(status="reloading config")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg = fake_systemd.recv()
    assert msg["RELOADING"] == "1" and msg["STATUS"] == "reloading config"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after


@pytest.mark.parametrize("backend", BACKENDS)
def test_extend_timeout(fake_systemd: FakeSystemd, backend: str) -> None:
    n = Notifier(backend=backend)  # type: ignore[arg-type]
    assert n.extend_timeout(90.5)
    assert fake_systemd.recv() == {"EXTEND_TIMEOUT_USEC": "90500000"}
    with pytest.raises(ValueError):
        n.extend_timeout(0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_watchdog_rate_limited_by_injected_clock(
    fake_systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "8000000")  # WatchdogSec=8s -> at most every 2 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    now = [100.0]
    n = Notifier(backend=backend, clock=lambda: now[0])  # type: ignore[arg-type]
    assert n.watchdog_interval() == 8.0
    sent = []
    for t in [100.0, 100.5, 101.9, 102.0, 102.1, 103.9, 104.0, 110.0]:
        now[0] = t
        sent.append(n.watchdog())
    assert sent == [True, False, False, True, False, False, True, True]
    assert fake_systemd.pending() == [{"WATCHDOG": "1"}] * 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_watchdog_timeout_pings_and_restores(
    fake_systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "120000000")
    n = Notifier(backend=backend)  # type: ignore[arg-type]
    assert n.set_watchdog_timeout(900)
    assert fake_systemd.recv() == {"WATCHDOG": "1", "WATCHDOG_USEC": "900000000"}
    assert n.set_watchdog_timeout(None)
    assert fake_systemd.recv() == {"WATCHDOG": "1", "WATCHDOG_USEC": "120000000"}


def test_watchdog_off_without_watchdog_usec(fake_systemd: FakeSystemd) -> None:
    n = Notifier(backend="socket")
    assert n.watchdog_interval() is None
    assert not n.watchdog()
    assert not n.set_watchdog_timeout(600)
    assert fake_systemd.pending() == []


def test_watchdog_pid_for_another_process_disables_it() -> None:
    env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval_from_env(env) is None
    assert watchdog_interval_from_env({**env, "WATCHDOG_PID": str(os.getpid())}) == 1.0
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_from_env({}) is None


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    n = Notifier()
    assert n.backend == "none" and not n.enabled
    assert not n.ready(status="idle")
    assert not n.status("x")
    assert not n.reloading()
    assert not n.stopping()
    assert not n.extend_timeout(10)
    assert not n.watchdog()


@pytest.mark.parametrize("backend", BACKENDS)
def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    name = f"dgx-music-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("@" + name, "\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        n = Notifier(backend=backend)  # type: ignore[arg-type]
        assert n.ready()
        assert fake.recv() == {"READY": "1"}
    finally:
        fake.sock.close()


def test_env_mapping_is_honoured_by_socket_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    path = str(tmp_path / "n.sock")
    fake = FakeSystemd(path, path)
    try:
        n = Notifier(env={"NOTIFY_SOCKET": path}, backend="socket")
        n.status("idle")
        assert fake.recv() == {"STATUS": "idle"}
    finally:
        fake.sock.close()


def test_unsupported_socket_kind_is_refused() -> None:
    with pytest.raises(NotifyError, match="vsock"):
        Notifier(env={"NOTIFY_SOCKET": "vsock:2:1234"}, backend="socket")


def test_gone_socket_logs_once_and_carries_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")}, backend="socket")
    assert not n.status("a")
    assert not n.status("b")
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.skipif(not HAVE_SYSTEMD_PYTHON, reason="systemd-python not installed")
def test_explicit_env_socket_is_not_sent_through_libsystemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    path = str(tmp_path / "n.sock")
    assert Notifier(env={"NOTIFY_SOCKET": path}).backend == "socket"
    with pytest.raises(NotifyError, match="process's NOTIFY_SOCKET"):
        Notifier(env={"NOTIFY_SOCKET": path}, backend="systemd")
