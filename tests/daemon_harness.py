"""The real daemon as a subprocess, for the end-to-end tests and the benchmarks.

`DaemonProcess` runs `python -m daemon serve --config FILE` with its log in a file (a pipe
could fill up and block the daemon), waits for its "ready:" line, and is always killed in the
end. `SpoolView` reads what came out: sidecars in outbox/ and failed/, by job id and by source
file. `run_cli` runs any other `dgx-music` subcommand the same way a user would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
READY_LINE = "ready: watching"


# DGX_MUSIC_TEST_CLI=/path/to/bin/dgx-music runs every daemon and CLI child through that installed
# console script (scripts/check-installed.sh sets it for the wheel), from outside the checkout.
INSTALLED_CLI = os.environ.get("DGX_MUSIC_TEST_CLI", "")


def dgx_music_command() -> list[str]:
    """How a child `dgx-music` is started: the installed console script, or this checkout."""
    return [INSTALLED_CLI] if INSTALLED_CLI else [sys.executable, "-m", "daemon"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a daemon or CLI child: no DGX_MUSIC_* overrides from the caller's
    shell, no systemd variables (the child must log to its stderr file, not to the journal)."""
    systemd_vars = (
        "NOTIFY_SOCKET",
        "JOURNAL_STREAM",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DGX_MUSIC_", "DGXMUSIC_")) and k not in systemd_vars
    }
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if INSTALLED_CLI:
        env.pop("PYTHONPATH", None)  # the installed wheel alone, nothing of the checkout
    else:
        # Run from the source tree even when the package is not installed in this interpreter.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def write_config(path: Path, spool: Path, model_dir: Path, **settings: Any) -> Path:
    """A daemon config for the tiny model on CPU: quick to start, quick jobs; `settings` win."""
    values: dict[str, Any] = {
        "spool": str(spool),
        "models": {"tiny": {"path": str(model_dir)}},
        "default_model": "tiny",
        "device": "cpu",
        "warmup": False,
        "settle_s": 0.2,
        "rescan_interval_s": 5,
        "stop_grace_s": 10,
        "log_level": "INFO",
    }
    write_faults(path, settings.pop("fault_injection", None))
    values.update(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def faults_file(config: Path) -> Path:
    return config.parent / (config.name + ".faults.json")


def write_faults(config: Path, faults: Mapping[str, Any] | None) -> None:
    """Faults for the daemons started with `config` (the service reads them from the environment
    variable DGXMUSIC_TEST_FAULTS, which DaemonProcess sets from this file); None clears them."""
    target = faults_file(config)
    if faults:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(dict(faults)))
    else:
        target.unlink(missing_ok=True)


def model_dir_or_tiny(model_dir: str | Path | None, scratch: Path) -> Path:
    """The checkpoint a benchmark was given, or a fresh tiny one built in `scratch`."""
    if model_dir:
        return Path(model_dir)
    from daemon.ops.tinymodel import init_tiny

    return init_tiny(scratch / "tiny")


def job_yaml(prompt: str = "a short test tune for the daemon", duration: float = 0.5, **fields: Any) -> str:
    return yaml.safe_dump({"prompt": prompt, "duration": duration, **fields}, sort_keys=False)


def run_cli(config: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`dgx-music ARGS --config CONFIG` as a subprocess; returns the finished process."""
    return subprocess.run(
        [*dgx_music_command(), *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        cwd=config.parent if INSTALLED_CLI else REPO,
    )


def wait_until(
    pred: Callable[[], Any],
    timeout: float,
    *,
    interval: float = 0.05,
    what: str = "condition",
    alive: "DaemonProcess | None" = None,
) -> Any:
    """Poll `pred` until it returns something truthy (returned); fail after `timeout` seconds,
    or at once when `alive` (a daemon the condition depends on) has exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if alive is not None and alive.proc is not None and alive.proc.poll() is not None:
            raise AssertionError(
                f"daemon exited (rc {alive.proc.returncode}) while waiting for {what}\n{alive.log_tail()}"
            )
        if time.monotonic() >= deadline:
            tail = f"\n{alive.log_tail()}" if alive is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(interval)


# The spools of every daemon a test started: after the test, the conftest validates each sidecar in
# them against the committed result.schema.json (tests/sidecar_contract.py), wherever they live.
STARTED_SPOOLS: set[Path] = set()


def _spool_of(config: Path) -> Path | None:
    try:
        spool = (yaml.safe_load(config.read_text()) or {}).get("spool")
    except (OSError, yaml.YAMLError):
        return None
    return (config.parent / spool).resolve() if isinstance(spool, str) else None


class DaemonProcess:
    """One `dgx-music serve` child. Use as a context manager, or call `close()` in a finally."""

    def __init__(self, config: Path, log_path: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.extra_env = dict(env or {})  # on top of clean_env(): e.g. NOTIFY_SOCKET, OMP_NUM_THREADS
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._offset = 0
        self._log_fh: Any = None

    def _fault_env(self) -> dict[str, str]:
        f = faults_file(self.config)
        return {"DGXMUSIC_TEST_FAULTS": f.read_text()} if f.exists() else {}

    def start(self, *, wait_ready: bool = True, timeout: float = 180.0) -> "DaemonProcess":
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("daemon already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        if self._log_fh is not None:
            self._log_fh.close()
        self._log_fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*dgx_music_command(), "serve", "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            env=clean_env(**self._fault_env(), **self.extra_env),
            # Settings read `.env` from the working directory: keep a developer's out of it.
            cwd=self.config.parent,
        )
        self.starts += 1
        if (spool := _spool_of(self.config)) is not None:
            STARTED_SPOOLS.add(spool)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        """This run's log (a restarted daemon appends to the same file)."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[getattr(self, "_offset", 0) :].decode("utf-8", "replace")

    def full_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "--- daemon log (tail) ---\n" + "\n".join(self.full_log().splitlines()[-n:])

    def log_text(self, *, this_run: bool = False) -> str:
        return self.log() if this_run else self.full_log()

    def wait_log(self, text: str, timeout: float = 180.0) -> None:
        """Wait until this run's log shows `text`; fail at once when the daemon exits."""
        wait_until(
            lambda: text in self.log(), timeout, interval=0.05, what=f"the log line {text!r}", alive=self
        )

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Seconds from now until the daemon logged that it is ready."""
        t0 = time.monotonic()
        self.wait_log(READY_LINE, timeout)
        return time.monotonic() - t0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    # /proc figures, for the leak checks of the flood.
    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon did not exit within {timeout:.0f} s\n{self.log_tail()}") from None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(30)

    def close(self) -> None:
        """Always safe: kills the child if it still runs (a failed test must not leak it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpoolView:
    """Read-only view of a spool's results, for assertions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.work = root / "work"
        self.outbox = root / "outbox"
        self.failed = root / "failed"
        self.state = root / "state"

    def drop(self, name: str, text: str) -> Path:
        """Write a job the way most tools do: a dot-temp in the inbox renamed onto the name."""
        tmp = self.inbox / f".{name}.partial-{os.getpid()}"
        tmp.write_text(text)
        path = self.inbox / name
        os.rename(tmp, path)
        return path

    def sidecars(self) -> list[tuple[Path, dict[str, Any]]]:
        """Every published sidecar: results in outbox/ and errors in failed/."""
        found: list[tuple[Path, dict[str, Any]]] = []
        for folder, suffix in ((self.outbox, ".json"), (self.failed, ".error.json")):
            if not folder.is_dir():
                continue
            for p in sorted(folder.iterdir()):
                if p.name.startswith(".") or not p.name.endswith(suffix):
                    continue
                found.append((p, json.loads(p.read_bytes())))
        return found

    def by_job(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for path, body in self.sidecars():
            job_id = body["job_id"]
            assert job_id not in out, f"two sidecars for job {job_id}: {path}"
            out[job_id] = body
        return out

    def by_source(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for _path, body in self.sidecars():
            out.setdefault(body["source_file"], []).append(body)
        return out

    def outcome(self, job_id: str) -> dict[str, Any] | None:
        for path in (self.outbox / f"{job_id}.json", self.failed / f"{job_id}.error.json"):
            try:
                return json.loads(path.read_bytes())
            except FileNotFoundError:
                continue
        return None

    def wait_outcome(
        self, job_id: str, timeout: float = 60.0, *, alive: DaemonProcess | None = None
    ) -> dict[str, Any]:
        return wait_until(lambda: self.outcome(job_id), timeout, what=f"the sidecar of {job_id}", alive=alive)

    def wait_sources(
        self, names: Iterable[str], timeout: float, *, alive: DaemonProcess | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """Wait until every source file in `names` has at least one outcome; returns by_source()."""
        wanted = set(names)

        def ready() -> dict[str, list[dict[str, Any]]] | None:
            got = self.by_source()
            return got if wanted <= set(got) else None

        return wait_until(
            ready, timeout, interval=0.2, what=f"outcomes of {len(wanted)} job file(s)", alive=alive
        )

    def job_files(self, folder: Path) -> list[str]:
        """Visible (non-dot) names in a spool folder."""
        return sorted(n for n in os.listdir(folder) if not n.startswith("."))

    def wait_running(self, job_id: str, timeout: float = 60.0, *, alive: DaemonProcess | None = None) -> None:
        """Until a daemon's state/ shows `job_id` running."""
        wait_until(
            lambda: any(r.get("job_id") == job_id for r in self.running()),
            timeout,
            what=f"{job_id} running",
            alive=alive,
        )

    def running(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.state.glob("running*.json")):
            try:
                out.append(json.loads(p.read_bytes()))
            except (FileNotFoundError, ValueError):
                continue
        return out

    def queued_ids(self) -> list[str]:
        ids: list[str] = []
        for p in sorted(self.state.glob("queue*.json")):
            try:
                data = json.loads(p.read_bytes())
            except (FileNotFoundError, ValueError):
                continue
            ids.extend(e["job_id"] for e in data.get("queued", []))
        return ids
