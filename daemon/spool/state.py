"""What `dgx-music status` and `dgx-music cancel` share with the running daemon, under state/:

    state/running.json     the job being generated: {job_id, percent, frames_done, frames_total,
                           eta_s, started, updated, pid, host}; absent when idle
    state/queue.json       the queue in order (written on every change)
    state/recent.json      the last 50 outcomes, newest last
    state/cancel/<job_id>  a cancel request (created by `dgx-music cancel`)

Every file is replaced by rename, so a reader sees the old or the new content, never a part.
These files are not fsynced: they describe the present, a power cut makes them moot (the daemon
rewrites them at start), and an fsync in the progress callback would stall generation on a busy
disk. `instance` (e.g. "gpu0") gives each daemon sharing a spool its own running/queue file
(`running.gpu0.json`); readers glob them all.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from daemon.core.config import Settings
from daemon.core.fsio import temp_name_for
from daemon.spool.layout import iso_utc
from daemon.spool.owner import host_name
from jobspec.names import is_valid_job_id

RECENT_LIMIT = 50
PROGRESS_MIN_INTERVAL_S = 0.5  # "replaced atomically at most twice a second"


class InvalidJobIdError(ValueError):
    """A cancel request names something that is not a job id (it would escape state/cancel/)."""


def _named(settings: Settings, base: str, instance: str | None) -> Path:
    if instance is not None and not is_valid_job_id(instance):
        raise ValueError(f"instance name {instance!r} must use letters, digits, '.', '_' and '-'")
    name = f"{base}.{instance}.json" if instance else f"{base}.json"
    return settings.state_dir / name


def running_path(settings: Settings, instance: str | None = None) -> Path:
    return _named(settings, "running", instance)


def queue_path(settings: Settings, instance: str | None = None) -> Path:
    return _named(settings, "queue", instance)


def recent_path(settings: Settings) -> Path:
    return settings.state_dir / "recent.json"


def replace_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON to a dot-temp beside `path` and rename it over `path` (no fsync)."""
    data = (json.dumps(obj, indent=2, ensure_ascii=True) + "\n").encode("ascii")
    tmp = temp_name_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any | None:
    """The file's JSON, or None when it does not exist."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- progress


class ProgressWriter:
    """Keeps state/running.json in step with the running job, at most once per `min_interval_s`.

    Call `start(job_id, frames_total)` when generation begins, `update(frames_done)` from the
    engine's progress callback (cheap when rate-limited: no I/O), `finish()` when the job ends
    (removes the file). `clock` is monotonic (rate limit, ETA); `wall` stamps `started`/`updated`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        instance: str | None = None,
        min_interval_s: float = PROGRESS_MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = running_path(settings, instance)
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._last_write: float | None = None
        self._state: dict[str, Any] | None = None
        self._t0 = 0.0
        self._dirty = False
        self.writes = 0
        self._host = host_name()

    def start(self, job_id: str, frames_total: int, **extra: Any) -> None:
        """A new job is running; `extra` (e.g. model, attempt) is copied into the file."""
        with self._lock:
            self._t0 = self._clock()
            self._state = {
                "job_id": job_id,
                "percent": 0.0,
                "frames_done": 0,
                "frames_total": int(frames_total),
                "eta_s": None,
                "started": iso_utc(self._wall()),
                "updated": None,
                "pid": os.getpid(),
                "host": self._host,
                **extra,
            }
            self._dirty = True
            # A new job is news: written now, even right after the last job's final update
            # (rate-limited, a job that stalls at once would never show up as running).
            self._last_write = None
            self._maybe_write()

    def update(
        self, frames_done: int, frames_total: int | None = None, *, eta_s: float | None = None
    ) -> bool:
        """Record progress; returns True when the file was replaced now."""
        with self._lock:
            if self._state is None:
                raise RuntimeError("ProgressWriter.update() before start()")
            total = int(frames_total) if frames_total is not None else int(self._state["frames_total"])
            done = max(0, min(int(frames_done), total)) if total > 0 else int(frames_done)
            elapsed = self._clock() - self._t0
            if eta_s is None and done > 0 and total > 0:
                eta_s = elapsed * (total - done) / done
            self._state.update(
                frames_done=done,
                frames_total=total,
                percent=round(100.0 * done / total, 1) if total > 0 else 0.0,
                eta_s=round(eta_s, 1) if eta_s is not None else None,
            )
            self._dirty = True
            return self._maybe_write()

    @property
    def eta_s(self) -> float | None:
        """The running job's ETA as last recorded (None before the first step, or when idle)."""
        with self._lock:
            return None if self._state is None else self._state.get("eta_s")

    def flush(self) -> bool:
        """Write pending progress if the rate limit allows it now."""
        with self._lock:
            return self._maybe_write()

    def finish(self) -> None:
        with self._lock:
            self._state = None
            self._dirty = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _maybe_write(self) -> bool:
        if not self._dirty or self._state is None:
            return False
        now = self._clock()
        if self._last_write is not None and now - self._last_write < self.min_interval_s:
            return False
        self._state["updated"] = iso_utc(self._wall())
        replace_json(self.path, self._state)
        self._last_write = now
        self._dirty = False
        self.writes += 1
        return True


def _read_instances(settings: Settings, base: str) -> list[dict[str, Any]]:
    """The `<base>.json` / `<base>.<instance>.json` files of every daemon sharing the spool."""
    out = []
    for path in sorted(settings.state_dir.glob(f"{base}*.json")):
        data = read_json(path)
        if isinstance(data, dict):
            out.append(data)
    return out


def read_running(settings: Settings) -> list[dict[str, Any]]:
    """Every daemon's running job (one file per instance sharing the spool)."""
    return _read_instances(settings, "running")


# --------------------------------------------------------------------------- queue snapshot


def write_queue(
    settings: Settings,
    snapshot: list[Mapping[str, Any]],
    *,
    instance: str | None = None,
    model: Mapping[str, Any] | None = None,
) -> None:
    """state/queue.json: {updated, pid, host, queued: [...], model} (JobQueue.snapshot() order).

    `model` describes the resident model (name, device, dtype, decoder) or is None when none is.
    """
    replace_json(
        queue_path(settings, instance),
        {
            "updated": iso_utc(time.time()),
            "pid": os.getpid(),
            "host": host_name(),
            "queued": [dict(e) for e in snapshot],
            "model": dict(model) if model is not None else None,
        },
    )


def read_queues(settings: Settings) -> list[dict[str, Any]]:
    """Every daemon's queue snapshot."""
    return _read_instances(settings, "queue")


# --------------------------------------------------------------------------- cancel requests


def _cancel_dir(settings: Settings) -> Path:
    return settings.state_dir / "cancel"


def check_job_id(job_id: str) -> None:
    """Refuse a name that is not a job id (InvalidJobIdError): it becomes part of spool paths."""
    if not is_valid_job_id(job_id):
        raise InvalidJobIdError(
            f"{job_id!r} is not a job id: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )


def _cancel_path(settings: Settings, job_id: str) -> Path:
    check_job_id(job_id)
    return _cancel_dir(settings) / job_id


def request_cancel(settings: Settings, job_id: str) -> Path:
    """Ask whichever daemon holds `job_id` to cancel it (queued or running)."""
    path = _cancel_path(settings, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_json(path, {"job_id": job_id, "requested": iso_utc(time.time()), "uid": os.getuid()})
    return path


def cancel_requested(settings: Settings, job_id: str, *, since: float | None = None) -> bool:
    """True when a cancel for `job_id` is pending. `since` (UNIX time, e.g. the claim time)
    ignores requests older than the job, left over from an earlier job with the same id."""
    try:
        path = _cancel_path(settings, job_id)
    except InvalidJobIdError:
        return False
    try:
        st = os.stat(path, follow_symlinks=False)  # submitters write state/cancel/: never follow
    except FileNotFoundError:
        return False
    return since is None or st.st_mtime >= since


def clear_cancel(settings: Settings, job_id: str) -> None:
    with contextlib.suppress(FileNotFoundError, InvalidJobIdError):
        os.unlink(_cancel_path(settings, job_id))


def pending_cancels(settings: Settings) -> list[str]:
    """Ids with a pending cancel request (the daemon matches them against its queue)."""
    try:
        names = os.listdir(_cancel_dir(settings))
    except FileNotFoundError:
        return []
    return sorted(n for n in names if not n.startswith(".") and is_valid_job_id(n))


# --------------------------------------------------------------------------- recent outcomes

_recent_lock = threading.Lock()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two daemons on one spool append to the same list: serialise the read-modify-write.
    with _recent_lock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


# In-process observers of outcomes (the service's page and metrics). Called from whichever
# thread recorded the outcome, so they must only take note and return.
_outcome_listeners: list[Callable[[Mapping[str, Any]], None]] = []


def add_outcome_listener(fn: Callable[[Mapping[str, Any]], None]) -> None:
    _outcome_listeners.append(fn)


def remove_outcome_listener(fn: Callable[[Mapping[str, Any]], None]) -> None:
    with contextlib.suppress(ValueError):
        _outcome_listeners.remove(fn)


def record_outcome(settings: Settings, entry: Mapping[str, Any], *, limit: int = RECENT_LIMIT) -> None:
    """Append {job_id, status, finished, sidecar, ...} to state/recent.json, keeping the last `limit`.

    The outcome is on disk already: listeners hear of it even when recent.json cannot be written."""
    path = recent_path(settings)
    try:
        with _locked(settings.state_dir / ".recent.lock"):
            current = read_json(path)
            items = current.get("recent", []) if isinstance(current, dict) else []
            items = [*items, dict(entry)][-limit:]
            replace_json(path, {"updated": iso_utc(time.time()), "recent": items})
    finally:
        for fn in list(_outcome_listeners):
            fn(entry)


def read_recent(settings: Settings) -> list[dict[str, Any]]:
    data = read_json(recent_path(settings))
    return list(data.get("recent", [])) if isinstance(data, dict) else []


def remove_dead_instances(settings: Settings) -> list[Path]:
    """Delete running/queue/heartbeat files left by daemons of this host that died (kill -9,
    OOM kill), so `status` does not show their jobs as running."""
    host = host_name()
    removed = []
    for path in [
        *settings.state_dir.glob("running*.json"),
        *settings.state_dir.glob("queue*.json"),
        *settings.state_dir.glob("daemon.*.json"),
    ]:
        data = read_json(path)
        if not isinstance(data, dict) or data.get("host") != host:
            continue
        try:
            os.kill(int(data.get("pid", 0)), 0)
            continue
        except ProcessLookupError:
            pass
        except (PermissionError, ValueError, OverflowError):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed
