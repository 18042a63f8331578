"""The real `dgx-music serve` as a subprocess, for the service (systemd) and reliability tests.

Nothing here is mocked: the daemon is `python -m daemon serve --config FILE` with the tiny
checkpoint on CPU; tests talk to it only through its spool, its signals, its log (stderr,
captured to a file) and, where asked, a NOTIFY_SOCKET this module binds.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon_harness import DaemonProcess, wait_until  # noqa: F401  (re-exported for the suite)
from daemon_harness import clean_env as _clean_env
from daemon_harness import job_yaml as _job_yaml
from daemon_harness import write_config as _write_config

from jobspec.names import PAGE_NAME

DEFAULT_START_TIMEOUT_S = 180.0  # importing torch + loading on a busy 2-core CI box


def write_config(path: Path, spool: Path, model_dir: Path, **extra: Any) -> Path:
    """The shared tiny-model config, with the suite's quicker settle, rescan and grace times."""
    return _write_config(
        path, spool, model_dir, **{"settle_s": 0.1, "rescan_interval_s": 2.0, "stop_grace_s": 5.0, **extra}
    )


def job_yaml(prompt: str, duration: float = 0.1, seed: int = 1, **extra: Any) -> str:
    return _job_yaml(prompt, duration, seed=seed, **extra)


def drop(inbox: Path, name: str, data: str | bytes) -> Path:
    """Drop a job the way a careful submitter does: write a dot-temp, then rename it in."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(raw)
    target = inbox / name
    os.rename(tmp, target)
    return target


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without anything that would steer the daemon, plus `extra`."""
    return _clean_env(**dict(extra or {}))


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

    def wait_for(
        self, predicate: Callable[[str], bool], timeout: float, *, after: float = 0.0
    ) -> tuple[float, str]:
        """The first assignment after monotonic time `after` matching `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            for t, line in self.lines():
                if t >= after and predicate(line):
                    return t, line
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no notify message matched within {timeout} s; got {self.lines()[-30:]}"
                )
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class DaemonProc(DaemonProcess):
    """The suite's flavour of the shared harness: `start()` returns at once (tests time READY
    or expect an early exit themselves); `env` is what goes on top of the clean environment."""

    def start(self, *, wait_ready: bool = False, timeout: float = DEFAULT_START_TIMEOUT_S) -> "DaemonProc":
        super().start(wait_ready=wait_ready, timeout=timeout)
        return self

    def cleanup(self) -> None:
        self.close()


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
    stray.extend(
        f"outbox/{n}"
        for n in sorted(os.listdir(outbox))
        if not n.startswith(".") and n not in owned and n != PAGE_NAME
    )
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


def assert_exactly_once(spool: Path, expected: Mapping[str, int] | Iterable[str]) -> Outcomes:
    """Every expected job has exactly one outcome under its own id, nothing else is there, a
    completed job has exactly the outputs its request asked for (`count`, and the number given
    when `expected` maps ids to output counts), and every audio file named by a sidecar is whole
    (sha256 as recorded)."""
    import hashlib

    counts = dict(expected) if isinstance(expected, Mapping) else None
    ids = set(expected)
    got = outcomes(spool)
    both = set(got.completed) & set(got.failed)
    assert not both, f"jobs with two outcomes: {sorted(both)}"
    assert not got.stray, f"partial or orphan files visible: {got.stray}"
    renamed = sorted(i for i in got.ids() if i not in ids)
    assert not renamed, f"results under unexpected ids (a job ran twice?): {renamed}"
    missing = sorted(ids - got.ids())
    assert not missing, f"jobs without an outcome: {missing[:20]} ({len(missing)} in all)"
    for job_id, body in got.completed.items():
        asked = body["request"]["count"] if counts is None else counts[job_id]
        assert body["request"]["count"] == asked, (
            f"{job_id}: the sidecar's request has count {body['request']['count']}"
        )
        variations = [o.get("variation") for o in body["outputs"]]
        assert variations == list(range(1, asked + 1)), (
            f"{job_id}: asked for {asked} outputs, got {variations}"
        )
        for out in body["outputs"]:
            data = (spool / "outbox" / out["path"]).read_bytes()
            assert len(data) == out["bytes"], f"{out['path']}: size differs from its sidecar"
            assert hashlib.sha256(data).hexdigest() == out["sha256"], (
                f"{out['path']}: sha256 differs from its sidecar"
            )
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
