"""The real `dgx-music serve` as a subprocess, for the service (systemd) and reliability tests.

Nothing here is mocked: the daemon is `python -m daemon serve --config FILE` with the tiny
checkpoint on CPU; tests talk to it only through its spool, its signals, its log (stderr,
captured to a file) and, where asked, a NOTIFY_SOCKET this module binds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

READY_LINE = "ready: watching"
DEFAULT_START_TIMEOUT_S = 180.0  # importing torch + loading on a busy 2-core CI box


def write_config(path: Path, spool: Path, model_dir: Path, **extra: Any) -> Path:
    """A daemon config for the tiny model on CPU; `extra` keys override the defaults."""
    values: dict[str, Any] = {
        "spool": str(spool),
        "models": {"tiny": {"path": str(model_dir)}},
        "default_model": "tiny",
        "device": "cpu",
        "dtype": "auto",
        "warmup": False,
        "settle_s": 0.1,
        "rescan_interval_s": 2.0,
        "stop_grace_s": 5.0,
    }
    values.update(extra)
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def job_yaml(prompt: str, duration: float = 0.1, seed: int = 1, **extra: Any) -> str:
    body: dict[str, Any] = {"prompt": prompt, "duration": duration, "seed": seed, **extra}
    return yaml.safe_dump(body, sort_keys=False)


def drop(inbox: Path, name: str, data: str | bytes) -> Path:
    """Drop a job the way a careful submitter does: write a dot-temp, then rename it in."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(raw)
    target = inbox / name
    os.rename(tmp, target)
    return target


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without anything that would steer the daemon (DGX_MUSIC_*,
    systemd's variables), plus `extra`."""
    drop_prefixes = ("DGX_MUSIC_",)
    drop_names = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes) and k not in drop_names}
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra or {})
    return env


class NotifyListener:
    """Binds an AF_UNIX datagram socket (what systemd's NOTIFY_SOCKET is) and records every
    message with its arrival time (monotonic)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="notify-listener", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode("utf-8", "replace")))

    def snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.messages)

    def lines(self) -> list[tuple[float, str]]:
        """Every `KEY=value` assignment, one per entry (a datagram may carry several)."""
        out = []
        for t, msg in self.snapshot():
            out.extend((t, line) for line in msg.split("\n") if line)
        return out

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, *, after: float = 0.0) -> tuple[float, str]:
        """The first assignment after monotonic time `after` matching `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            for t, line in self.lines():
                if t >= after and predicate(line):
                    return t, line
            if time.monotonic() > deadline:
                raise AssertionError(f"no notify message matched within {timeout} s; got {self.lines()[-30:]}")
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@dataclass
class DaemonProc:
    """One `dgx-music serve` process; `start()` may be called again after it exited."""

    config: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=clean_env)
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log_offset: int = 0

    def start(self) -> "DaemonProc":
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("daemon already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Settings read `.env` from the working directory: keep the repo's out of it.
                cwd=str(self.cwd or self.config.parent),
            )
        finally:
            log.close()
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, *, this_run: bool = False) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return (data[self._log_offset :] if this_run else data).decode("utf-8", "replace")

    def wait_log(self, text: str, timeout: float = DEFAULT_START_TIMEOUT_S) -> None:
        """Wait until this run's log shows `text`; fail early when the daemon exits."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text(this_run=True):
            if not self.alive():
                raise AssertionError(f"daemon exited ({self.returncode()}) before logging {text!r}:\n{self.log_text(this_run=True)[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon did not log {text!r} within {timeout} s:\n{self.log_text(this_run=True)[-4000:]}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = DEFAULT_START_TIMEOUT_S) -> float:
        """Seconds from start() until the daemon logged that it is ready."""
        t0 = time.monotonic()
        self.wait_log(READY_LINE, timeout)
        return time.monotonic() - t0

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> int:
        """SIGKILL (a crash, as far as the spool can tell) and reap."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(30)

    def wait_exit(self, timeout: float = DEFAULT_START_TIMEOUT_S) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    # /proc figures, for the leak checks of the flood.
    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def wait_until(predicate: Callable[[], bool], timeout: float, *, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- spool inspection


@dataclass
class Outcomes:
    completed: dict[str, dict[str, Any]]  # job id -> result sidecar
    failed: dict[str, dict[str, Any]]  # job id -> error sidecar
    stray: list[str]  # names in outbox/ or failed/ that belong to no outcome (partial results)
    temps: list[str]  # dot-temps left in outbox/ or failed/

    def ids(self) -> set[str]:
        return set(self.completed) | set(self.failed)

    def count(self) -> int:
        return len(self.completed) + len(self.failed)


def outcomes(spool: Path) -> Outcomes:
    """Read outbox/ and failed/ as a user would, and flag anything that is not a finished outcome."""
    outbox, failed = spool / "outbox", spool / "failed"
    completed: dict[str, dict[str, Any]] = {}
    errors: dict[str, dict[str, Any]] = {}
    stray: list[str] = []
    temps: list[str] = []
    owned: set[str] = set()
    for name in sorted(os.listdir(outbox)):
        if name.startswith("."):
            temps.append(f"outbox/{name}")
        elif name.endswith(".json"):
            body = json.loads((outbox / name).read_bytes())
            completed[body["job_id"]] = body
            owned.add(name)
            owned.update(o["path"] for o in body["outputs"])
    stray.extend(f"outbox/{n}" for n in sorted(os.listdir(outbox)) if not n.startswith(".") and n not in owned)
    for name in sorted(os.listdir(failed)):
        if name.startswith("."):
            temps.append(f"failed/{name}")
        elif name.endswith(".error.json"):
            body = json.loads((failed / name).read_bytes())
            errors[body["job_id"]] = body
    for name in sorted(os.listdir(failed)):
        if name.startswith(".") or name.endswith(".error.json"):
            continue
        stem = name[: -len(".yaml")] if name.endswith(".yaml") else None
        if stem is None or stem not in errors:
            stray.append(f"failed/{name}")
    return Outcomes(completed, errors, stray, temps)


def base_id(job_id: str) -> str:
    """`j7-2` -> `j7`: the id a job asked for, before collision renaming."""
    head, sep, tail = job_id.rpartition("-")
    return head if sep and tail.isdigit() else job_id


def assert_exactly_once(spool: Path, expected_ids: Iterable[str]) -> Outcomes:
    """Every expected job has exactly one outcome under its own id, nothing else is there,
    and every audio file named by a sidecar is whole (sha256 as recorded)."""
    import hashlib

    expected = set(expected_ids)
    got = outcomes(spool)
    both = set(got.completed) & set(got.failed)
    assert not both, f"jobs with two outcomes: {sorted(both)}"
    assert not got.stray, f"partial or orphan files visible: {got.stray}"
    renamed = sorted(i for i in got.ids() if i not in expected)
    assert not renamed, f"results under unexpected ids (a job ran twice?): {renamed}"
    missing = sorted(expected - got.ids())
    assert not missing, f"jobs without an outcome: {missing[:20]} ({len(missing)} in all)"
    for job_id, body in got.completed.items():
        for out in body["outputs"]:
            data = (spool / "outbox" / out["path"]).read_bytes()
            assert len(data) == out["bytes"], f"{out['path']}: size differs from its sidecar"
            assert hashlib.sha256(data).hexdigest() == out["sha256"], f"{out['path']}: sha256 differs from its sidecar"
    return got


def spool_quiet(spool: Path) -> bool:
    """Nothing waiting: inbox/ and work/ hold no job files."""
    inbox = [n for n in os.listdir(spool / "inbox") if not n.startswith(".")]
    work = [n for n in os.listdir(spool / "work") if not n.startswith(".")]
    return not inbox and not work


# --------------------------------------------------------------------------- figures

REPORT_ENV = "DGX_MUSIC_RELIABILITY_REPORT"
FULL_ENV = "DGX_MUSIC_RELIABILITY_FULL"


def full_run() -> bool:
    """DGX_MUSIC_RELIABILITY_FULL=1: the issue's full sizes instead of the CI-sized ones."""
    return os.environ.get(FULL_ENV, "") == "1"


def record_figures(scenario: str, figures: Mapping[str, Any]) -> None:
    """Merge a scenario's figures into the JSON file named by $DGX_MUSIC_RELIABILITY_REPORT
    (what benchmarks/reliability_report.py prints); always printed too (pytest -s shows it)."""
    print(f"\n[reliability] {scenario}: {json.dumps(dict(figures), sort_keys=True)}")
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    path = Path(target)
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        data = {}
    data.setdefault(scenario, {}).update(figures)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
