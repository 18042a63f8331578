"""The spool on disk: layout, which inbox names are jobs, the rename claim, crash recovery,
result-id reservation, and moving a job to its final place.

Files are the API, so every rule here is about what another process may see at any moment:

* A claim is `rename(inbox/X.yaml, work/<token>.yaml)`. rename(2) on one filesystem is atomic, so
  when several daemons race for one file exactly one rename succeeds; the others get ENOENT.
* Each claimed job has a small meta file `work/.<token>.meta.json` (source name, times, attempts,
  owner). It is written *before* the rename, so a work file without a meta file is never a live
  daemon's claim in progress.
* Ownership and recovery: the meta names its owner (hostname, pid, the process's start time, the
  boot id and the pid namespace). `recover()` only takes over jobs whose owner is provably dead:
  same host, same pid namespace and either another boot, or no process with that pid and start
  time. Jobs of another host (a spool on NFS shared between machines) or another pid namespace
  are never taken: we cannot tell whether their owner lives, and taking a live daemon's job would
  run it twice. Taking over is itself a rename (`work/<old>.yaml -> work/<new>.yaml`), so two
  daemons recovering at once cannot both win.
* Attempts count how often the job was *started* (`mark_started`); a crash is counted only for a
  job that was running when its owner died, so jobs that were merely queued during a `kill -9`
  are re-queued without blame.
* Result ids: `reserve_id` gives `<id>`, `<id>-2`, ... so no name a job would write exists in
  outbox/ or failed/ or is held by a job in flight (an in-process set plus an O_EXCL file in
  `state/reserved/`, which is what keeps two daemons apart). A reservation records the claim it
  belongs to, so a recovered job gets its old id back instead of `<id>-2`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from daemon.core.fsio import TEMP_SUFFIX, atomic_write_bytes, fsync_dir
from daemon.core.config import Settings

log = logging.getLogger(__name__)

META_VERSION = 1
SPOOL_DIRS = ("inbox", "work", "outbox", "failed", "state")
JOB_SUFFIXES = (".yaml", ".yml")
# Names editors, office suites, browsers and transfer tools use while a file is incomplete.
_PARTIAL_SUFFIXES = (".swp", ".swx", ".tmp", ".part", ".crdownload", ".partial", ".download", "~")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A reserved id may carry a `-N` suffix on top of a full-length job id.
_RESERVED_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(-[0-9]{1,6})?")
_TOKEN_STEM_MAX = 100
_MAX_SUFFIX = 100_000


class SpoolError(Exception):
    """The spool cannot be used as configured; the message says which directory and why."""


# --------------------------------------------------------------------------- layout


def ensure_layout(settings: Settings) -> None:
    """Create inbox/ work/ outbox/ failed/ state/ (and state/ subfolders) below the spool.

    Refuses a layout spread over several filesystems: the claim and every publish step are
    renames, which only work (atomically) within one filesystem.
    """
    root = settings.spool
    try:
        root.mkdir(parents=True, exist_ok=True)
        for path in _layout_dirs(settings):
            path.mkdir(exist_ok=True)
    except OSError as exc:
        raise SpoolError(f"cannot create the spool below {root}: {exc}") from exc
    devices: dict[int, list[str]] = {}
    for path in _layout_dirs(settings):
        st = os.stat(path)  # follows a symlinked inbox on purpose: what matters is where files land
        if not stat.S_ISDIR(st.st_mode):
            raise SpoolError(f"{path} exists but is not a directory")
        devices.setdefault(st.st_dev, []).append(path.name)
    if len(devices) > 1:
        groups = "; ".join(", ".join(names) for names in devices.values())
        raise SpoolError(
            f"the spool directories below {root} are on different filesystems ({groups}); "
            "inbox/, work/, outbox/, failed/ and state/ must share one filesystem because claiming "
            "and publishing are renames (mount one volume at the spool root instead)"
        )


def _layout_dirs(settings: Settings) -> list[Path]:
    state = settings.state_dir
    return [
        settings.inbox,
        settings.work,
        settings.outbox,
        settings.failed,
        state,
        state / "reserved",
        state / "cancel",
    ]


# --------------------------------------------------------------------------- names


def is_ignored_name(name: str) -> bool:
    """Names that are never read: dot-files, editor backups and swap files, partial transfers."""
    if not name or name.startswith(".") or name.startswith("~$") or name.startswith("#"):
        return True
    lower = name.lower()
    return lower.endswith(_PARTIAL_SUFFIXES) or lower.startswith(".~lock")


def is_candidate(name: str) -> bool:
    """True for names the daemon treats as job files: `*.yaml` / `*.yml`, never an ignored name."""
    if is_ignored_name(name) or "/" in name or "\0" in name:
        return False
    lower = name.lower()
    return lower.endswith(JOB_SUFFIXES) and len(name) > len(".yml")


def fallback_id(name: str) -> str:
    """A valid job id from a file name, for files whose id cannot be read (broken YAML, symlinks).

    Characters outside the id alphabet become `_`; '..' is collapsed; never empty.
    """
    stem = name
    for suffix in JOB_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", stem)
    cleaned = re.sub(r"\.{2,}", ".", cleaned).lstrip("._-")[:128].rstrip(".")
    return cleaned or "job"


def is_valid_job_id(job_id: str) -> bool:
    """The job-id rule of the job language, plus the `-N` suffix `reserve_id` may add."""
    return bool(_RESERVED_ID_RE.fullmatch(job_id)) and ".." not in job_id


# --------------------------------------------------------------------------- owner / liveness


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
        host=socket.gethostname(),
        pid=pid,
        start_ticks=_start_ticks(pid),
        boot_id=_read_text("/proc/sys/kernel/random/boot_id"),
        pid_ns=_pid_ns(),
    )


def owner_alive(owner: Owner, *, me: Owner | None = None) -> bool:
    """False only when the owner is provably dead; an owner we cannot judge counts as alive."""
    me = me or current_owner()
    same_boot = bool(owner.boot_id and me.boot_id and owner.boot_id == me.boot_id)
    if not same_boot:
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


# --------------------------------------------------------------------------- claimed jobs


@dataclass(frozen=True)
class Claimed:
    """A job file that this daemon holds in work/.

    `source_name` is the name it had in the inbox (job ids default to its stem); `submitted_at`
    is that file's mtime, `claimed_at` when the claim happened (UNIX seconds). `attempts` counts
    how often it was started, `crashes` how often its owner died while it ran; `crashed` is set by
    `recover()` when `crashes >= max_attempts`: the caller must fail it with type `crashed`.
    """

    token: str
    claim_id: str
    work_path: Path
    meta_path: Path
    source_name: str
    submitted_at: float
    claimed_at: float
    attempts: int = 0
    crashes: int = 0
    running: bool = False
    crashed: bool = False
    owner: Owner | None = None

    @property
    def stem(self) -> str:
        for suffix in JOB_SUFFIXES:
            if self.source_name.lower().endswith(suffix):
                return self.source_name[: -len(suffix)]
        return self.source_name

    def read_bytes(self, max_bytes: int) -> bytes:
        """Up to `max_bytes + 1` bytes of the job file (one more than allowed, so an oversized
        file is detected without reading all of it). Never follows a link, never blocks on a FIFO.
        """
        fd = os.open(self.work_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFileError(f"{self.source_name}: not a regular file")
            chunks: list[bytes] = []
            left = max_bytes + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def meta(self) -> dict[str, Any]:
        return {
            "version": META_VERSION,
            "claim_id": self.claim_id,
            "token": self.token,
            "source_name": self.source_name,
            "submitted_at": self.submitted_at,
            "claimed_at": self.claimed_at,
            "attempts": self.attempts,
            "crashes": self.crashes,
            "running": self.running,
            "owner": self.owner.to_json() if self.owner else None,
        }


class NotRegularFileError(OSError):
    """A job path turned out not to be a regular file (a link, FIFO, device, socket, directory)."""


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=True) + "\n").encode("ascii")


def _write_meta(claimed: Claimed) -> None:
    atomic_write_bytes(claimed.meta_path, _dump(claimed.meta()))


def _new_token(stem: str) -> str:
    return f"{stem[:_TOKEN_STEM_MAX]}.{uuid.uuid4().hex[:8]}"


def _meta_path(settings: Settings, token: str) -> Path:
    return settings.work / f".{token}.meta.json"


def _token_stem(token: str) -> str:
    return token.rsplit(".", 1)[0] if "." in token else token


# Names already logged once, so a steady stream of rescans does not repeat the same warning.
_logged_once: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


def log_once(kind: str, name: str, message: str, *args: Any) -> None:
    with _logged_lock:
        if (kind, name) in _logged_once:
            return
        if len(_logged_once) > 10_000:  # bound it: a hostile inbox could hold millions of names
            _logged_once.clear()
        _logged_once.add((kind, name))
    log.warning(message, *args)


def forget_logged(names_present: Iterable[str]) -> None:
    """Drop remembered names that are gone, so a new file with an old name is reported again."""
    present = set(names_present)
    with _logged_lock:
        for key in [k for k in _logged_once if k[1] not in present]:
            _logged_once.discard(key)


def claim(settings: Settings, inbox_path: Path) -> Claimed | None:
    """Take `inbox_path` into work/. None when it is gone (another daemon won), not a job name,
    a directory (left alone, logged once), or a link / FIFO / device / socket (moved to failed/
    with an `invalid_job` error sidecar; never opened, never followed).
    """
    name = inbox_path.name
    if not is_candidate(name):
        return None
    try:
        st = os.lstat(inbox_path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        log_once("dir", name, "inbox: %s is a directory; directories are not jobs, leaving it alone", name)
        return None
    if not stat.S_ISREG(st.st_mode):
        reject_non_regular(settings, inbox_path, st)
        return None

    owner = current_owner()
    stem = name.rsplit(".", 1)[0]
    token = _new_token(stem)
    claimed = Claimed(
        token=token,
        claim_id=uuid.uuid4().hex,
        work_path=settings.work / f"{token}.yaml",
        meta_path=_meta_path(settings, token),
        source_name=name,
        submitted_at=st.st_mtime,
        claimed_at=time.time(),
        owner=owner,
    )
    # Meta first: a work file is never without its meta, so recovery can trust a missing meta.
    _write_meta(claimed)
    try:
        os.rename(inbox_path, claimed.work_path)
    except FileNotFoundError:
        _unlink_quiet(claimed.meta_path)
        return None
    except BaseException:
        _unlink_quiet(claimed.meta_path)
        raise
    # The inbox is writable by submitters: the entry may have been swapped between lstat and
    # rename. work/ is ours, so one more lstat settles it.
    st2 = os.lstat(claimed.work_path)
    if not stat.S_ISREG(st2.st_mode):
        _unlink_quiet(claimed.meta_path)
        reject_non_regular(settings, claimed.work_path, st2, display_name=name)
        return None
    log.debug("claimed %s as work/%s", name, claimed.work_path.name)
    return claimed


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def reject_non_regular(
    settings: Settings, path: Path, st: os.stat_result, *, display_name: str | None = None
) -> Path | None:
    """Move a link / FIFO / socket / device entry itself into failed/ (rename moves the entry,
    never its target; nothing is opened) and write its error sidecar. Returns the failed/ path,
    or None when the entry vanished first.
    """
    name = display_name or path.name
    kind = _kind(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        message = (
            f"{name} is a symbolic link; symlinks are not accepted in the inbox "
            "(copy the file itself, e.g. `cp -L`, or use `dgx-music submit`)"
        )
    else:
        message = f"{name} is {kind}; only regular files are accepted as jobs"
    job_id = reserve_id(settings, fallback_id(name), lambda i: [f"{i}.yaml"])
    target = settings.failed / f"{job_id}.yaml"
    try:
        try:
            _move_no_clobber(path, target)
        except FileNotFoundError:
            return None
        now = time.time()
        sidecar = error_sidecar(
            job_id=job_id,
            source_file=name,
            error_type="invalid_job",
            message=message,
            hint="drop a regular YAML file",
            submitted_at=st.st_mtime,
            started_at=None,
            finished_at=now,
            attempts=0,
        )
        atomic_write_bytes(settings.failed / f"{job_id}.error.json", _dump(sidecar), create_new=True)
    finally:
        release_id(settings, job_id)
    log.warning("inbox: rejected %s (%s): moved to failed/%s", name, kind, target.name)
    return target


def mark_started(settings: Settings, claimed: Claimed) -> Claimed:
    """Record that the job is about to run (attempts + 1, running); call before generation so a
    crash during it is blamed on this job."""
    updated = replace(claimed, attempts=claimed.attempts + 1, running=True)
    _write_meta(updated)
    return updated


def mark_requeued(settings: Settings, claimed: Claimed) -> Claimed:
    """The job stopped without a crash (SIGTERM, OOM split retry later): not blamed at recovery."""
    updated = replace(claimed, running=False)
    _write_meta(updated)
    return updated


def _load_meta(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(1 << 20))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("work/%s: unreadable claim record (%s); treating the job as unowned", path.name, exc)
        return {}
    return data if isinstance(data, dict) else {}


def recover(settings: Settings, *, max_attempts: int | None = None, orphan_grace_s: float = 60.0) -> list[Claimed]:
    """Take over jobs left in work/ by daemons that died; safe to call at any time, from several
    daemons at once. Returns them oldest claim first; `crashed` is set on those that crashed their
    daemon `max_attempts` times (default: settings.max_attempts) and must be failed as `crashed`.

    Also removes claim records and id reservations that belong to no job and no live owner.
    """
    limit = settings.max_attempts if max_attempts is None else max_attempts
    me = current_owner()
    now = time.time()
    try:
        entries = list(os.scandir(settings.work))
    except FileNotFoundError:
        return []
    work_files = {e.name[: -len(".yaml")]: e for e in entries if not e.name.startswith(".") and e.name.endswith(".yaml")}
    meta_names = {e.name for e in entries if e.name.startswith(".") and e.name.endswith(".meta.json")}

    recovered: list[Claimed] = []
    live_claims: set[str] = set()
    for token, entry in sorted(work_files.items()):
        meta_path = _meta_path(settings, token)
        meta = _load_meta(meta_path)
        if meta is None:
            # A work file without a meta never belongs to a claim in progress (meta goes first);
            # still, give a foreign tool that moved it here a grace period.
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if now - st.st_ctime < orphan_grace_s:
                continue
            meta = {"source_name": f"{_token_stem(token)}.yaml", "submitted_at": st.st_mtime, "claimed_at": st.st_ctime}
        owner_data = meta.get("owner")
        if owner_data:
            owner = Owner.from_json(owner_data)
            if owner_alive(owner, me=me):
                if meta.get("claim_id"):
                    live_claims.add(str(meta["claim_id"]))
                continue
        taken = _take_over(settings, token, meta, me, limit)
        if taken is not None:
            recovered.append(taken)
            live_claims.add(taken.claim_id)

    # Every claim id still named by a meta file counts as live (a takeover in progress has both).
    for name in meta_names:
        data = _load_meta(settings.work / name) or {}
        token = name[1 : -len(".meta.json")]
        owner_data = data.get("owner")
        if token in work_files or (owner_data and owner_alive(Owner.from_json(owner_data), me=me)):
            if data.get("claim_id"):
                live_claims.add(str(data["claim_id"]))
            continue
        if token not in work_files and (settings.work / f"{token}.yaml").exists():
            continue  # created after our listing
        _unlink_quiet(settings.work / name)  # orphan of a claim that lost its race or finished
    _clean_reservations(settings, live_claims, me)
    recovered.sort(key=lambda c: c.claimed_at)
    return recovered


def _take_over(settings: Settings, token: str, meta: Mapping[str, Any], me: Owner, limit: int) -> Claimed | None:
    running = bool(meta.get("running", False))
    crashes = int(meta.get("crashes", 0)) + (1 if running else 0)
    new_token = _new_token(_token_stem(token))
    claimed = Claimed(
        token=new_token,
        claim_id=str(meta.get("claim_id") or uuid.uuid4().hex),
        work_path=settings.work / f"{new_token}.yaml",
        meta_path=_meta_path(settings, new_token),
        source_name=str(meta.get("source_name") or f"{_token_stem(token)}.yaml"),
        submitted_at=float(meta.get("submitted_at") or time.time()),
        claimed_at=float(meta.get("claimed_at") or time.time()),
        attempts=int(meta.get("attempts", 0)),
        crashes=crashes,
        running=False,
        crashed=crashes >= limit,
        owner=me,
    )
    _write_meta(claimed)
    try:
        os.rename(settings.work / f"{token}.yaml", claimed.work_path)
    except FileNotFoundError:
        _unlink_quiet(claimed.meta_path)  # another daemon recovered it first
        return None
    _unlink_quiet(_meta_path(settings, token))
    log.warning(
        "recovered %s from work/ (attempts %d, crashes %d%s)",
        claimed.source_name,
        claimed.attempts,
        claimed.crashes,
        ", failing it as crashed" if claimed.crashed else "",
    )
    return claimed


def clean_stale_temps(settings: Settings, *, older_than_s: float = 600.0) -> list[Path]:
    """Remove dot-temps (`.<name>.<hex>.tmp`, see daemon.core.fsio) that a killed writer left in
    work/ outbox/ failed/ state/. A live writer touches its temp with every write, so one
    untouched for `older_than_s` is abandoned."""
    removed = []
    cutoff = time.time() - older_than_s
    for folder in (settings.work, settings.outbox, settings.failed, settings.state_dir):
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except FileNotFoundError:
                continue
    return removed


def list_claims(settings: Settings) -> list[dict[str, Any]]:
    """Claim records of every job in work/ (any owner), for `status`."""
    out = []
    try:
        names = sorted(os.listdir(settings.work))
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(".") and name.endswith(".meta.json"):
            meta = _load_meta(settings.work / name)
            if meta and (settings.work / f"{name[1:-len('.meta.json')]}.yaml").exists():
                out.append(meta)
    return out


# --------------------------------------------------------------------------- id reservation

_reserved: dict[Path, set[str]] = {}
_reserved_lock = threading.Lock()


def _reservation_dir(settings: Settings) -> Path:
    return settings.state_dir / "reserved"


def reserve_id(
    settings: Settings,
    job_id: str,
    names_for: Callable[[str], list[str]],
    *,
    claim_id: str | None = None,
) -> str:
    """The first of `job_id`, `job_id-2`, `job_id-3`, ... such that no name the job would write
    (`names_for(candidate)`, plus the candidate's `.json`, `.error.json` and `.yaml`) exists in
    outbox/ or failed/, and no other job in flight holds it. Call `release_id` once the job's
    outcome is on disk (`fail_job`/`complete_job` do it for ids they are given).

    `claim_id`: a recovered job passes its `Claimed.claim_id` and gets back the id it had reserved
    before the crash.
    """
    if not is_valid_job_id(job_id):
        raise ValueError(f"{job_id!r} is not a valid job id")
    res_dir = _reservation_dir(settings)
    res_dir.mkdir(parents=True, exist_ok=True)
    key = settings.spool.resolve()
    owner = current_owner()
    for n in range(1, _MAX_SUFFIX):
        candidate = job_id if n == 1 else f"{job_id}-{n}"
        with _reserved_lock:
            held = _reserved.setdefault(key, set())
            path = res_dir / candidate
            # Our own reservation (a recovered claim) comes first: the job's outputs may already
            # be on disk, and the caller must learn its old id to see that.
            if claim_id is not None and _reservation_claim(path) == claim_id:
                held.add(candidate)
                return candidate
            if candidate in held:
                continue
            if _names_taken(settings, candidate, names_for):
                continue
            record = _dump({"claim_id": claim_id, "owner": owner.to_json(), "reserved_at": time.time()})
            if _stale_empty(path):
                _unlink_quiet(path)
            if not _create_with(path, record):
                continue
            held.add(candidate)
            return candidate
    raise SpoolError(f"no free result id for {job_id!r} after {_MAX_SUFFIX} tries")


def outcome_exists(settings: Settings, job_id: str) -> bool:
    """True when `job_id` already has its final outcome on disk (outbox/<id>.json or
    failed/<id>.error.json): a recovered claim whose job finished just before the crash."""
    return (settings.outbox / f"{job_id}.json").exists() or (settings.failed / f"{job_id}.error.json").exists()


def _create_with(path: Path, record: bytes) -> bool:
    """Create `path` holding `record`, or return False when it exists. The file appears with its
    content (a temp linked into place), so a kill can never leave an empty reservation behind:
    an empty one would name no claim and cost a recovered job its id."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, record)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links here: O_EXCL is still exclusive, only no longer born with its content.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, record)
        finally:
            os.close(fd)
        return True
    finally:
        _unlink_quiet(tmp)


def _stale_empty(path: Path, *, older_than_s: float = 10.0) -> bool:
    """An empty reservation left by a kill (older versions, or a filesystem without links)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return st.st_size == 0 and time.time() - st.st_mtime > older_than_s


def _names_taken(settings: Settings, candidate: str, names_for: Callable[[str], list[str]]) -> bool:
    names = {*names_for(candidate), f"{candidate}.json", f"{candidate}.error.json", f"{candidate}.yaml"}
    for name in names:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"names_for returned {name!r}: give bare file names")
        for folder in (settings.outbox, settings.failed):
            if os.path.lexists(folder / name):
                return True
    return False


def _load_reservation(path: Path) -> dict[str, Any] | None:
    # O_EXCL create and the write are two steps: an empty or short file is one being written.
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _reservation_claim(path: Path) -> str | None:
    data = _load_reservation(path)
    return str(data["claim_id"]) if data and data.get("claim_id") else None


def release_id(settings: Settings, job_id: str) -> None:
    """Give up a reservation (after the outcome is written, or when the job is dropped)."""
    key = settings.spool.resolve()
    with _reserved_lock:
        _reserved.get(key, set()).discard(job_id)
        _unlink_quiet(_reservation_dir(settings) / job_id)


def _clean_reservations(settings: Settings, live_claims: set[str], me: Owner) -> None:
    res_dir = _reservation_dir(settings)
    try:
        names = os.listdir(res_dir)
    except FileNotFoundError:
        return
    key = settings.spool.resolve()
    for name in names:
        with _reserved_lock:
            if name in _reserved.get(key, set()):
                continue
            data = _load_reservation(res_dir / name)
            if not data:
                if _stale_empty(res_dir / name):
                    _unlink_quiet(res_dir / name)
                continue  # being written right now, or unreadable: leave it
            if data.get("claim_id") in live_claims:
                continue
            owner_data = data.get("owner")
            if owner_data and owner_alive(Owner.from_json(owner_data), me=me):
                continue
            _unlink_quiet(res_dir / name)


# --------------------------------------------------------------------------- outcomes


def error_sidecar(
    *,
    job_id: str,
    source_file: str,
    error_type: str,
    message: str,
    details: list[Mapping[str, Any]] | None = None,
    hint: str | None = None,
    submitted_at: float | None,
    started_at: float | None,
    finished_at: float,
    attempts: int,
    status: str = "failed",
    request: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An `<id>.error.json` body with the DESIGN fields (jobspec's ErrorSidecar validates it when
    present, so both stay in step)."""
    body: dict[str, Any] = {
        "schema_version": 1,
        "job_id": job_id,
        "status": status,
        "source_file": source_file,
        "submitted": iso_utc(submitted_at) if submitted_at is not None else None,
        "started": iso_utc(started_at) if started_at is not None else None,
        "finished": iso_utc(finished_at),
        "error": {
            "type": error_type,
            "message": message,
            "details": [dict(d) for d in (details or [])],
            "hint": hint,
        },
        "attempts": attempts,
    }
    if request is not None:
        body["request"] = dict(request)
    return _validated(body)


def _validated(body: dict[str, Any]) -> dict[str, Any]:
    try:
        from jobspec.sidecar import ErrorSidecar  # type: ignore[import-not-found]
    except ImportError:
        return body
    return ErrorSidecar.model_validate(body).model_dump(mode="json")


def _sidecar_bytes(error: Any) -> bytes:
    if hasattr(error, "model_dump"):
        return _dump(error.model_dump(mode="json"))
    if isinstance(error, Mapping):
        return _dump(dict(error))
    raise TypeError(f"error sidecar must be a mapping or a pydantic model, got {type(error).__name__}")


def fail_job(
    settings: Settings,
    claimed: Claimed,
    error: Mapping[str, Any] | Any,
    *,
    job_id: str,
    keep_work: bool = False,
) -> tuple[Path, Path]:
    """Put the job's original bytes at failed/<job_id>.yaml, then failed/<job_id>.error.json.

    `job_id` must come from `reserve_id` (it is released here). The bytes are moved, not
    rewritten (a hard link then unlink of the work file), unless `keep_work`: other jobs of the
    same batch file still need it, so a copy is written and the claim stays. Without `keep_work`
    the claim is finished (meta removed). A failure to write (full disk, EROFS) raises OSError
    and leaves the claim in work/, to be retried.
    """
    yaml_path = settings.failed / f"{job_id}.yaml"
    err_path = settings.failed / f"{job_id}.error.json"
    if keep_work:
        data = claimed.work_path.read_bytes()
        _write_new_or_same(yaml_path, data)
    else:
        _move_no_clobber(claimed.work_path, yaml_path, accept_same=True)
    atomic_write_bytes(err_path, _sidecar_bytes(error), create_new=True)
    if not keep_work:
        _unlink_quiet(claimed.meta_path)
    release_id(settings, job_id)
    return yaml_path, err_path


def complete_job(settings: Settings, claimed: Claimed, job_ids: Iterable[str] = ()) -> None:
    """The job file's outcomes are all on disk: drop the work file and its claim record, and
    release the given reserved ids."""
    _unlink_quiet(claimed.work_path)
    _unlink_quiet(claimed.meta_path)
    for job_id in job_ids:
        release_id(settings, job_id)


def _write_new_or_same(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data, create_new=True)
    except FileExistsError:
        if path.read_bytes() != data:  # a retry after a crash finds its own copy: fine
            raise


def _move_no_clobber(src: Path, dst: Path, *, accept_same: bool = False) -> None:
    """rename(2) without replacing an existing `dst`: link + unlink where links work."""
    linked = True
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        # accept_same: a crash came between link and unlink last time; finish that move.
        if not (accept_same and _same_inode(src, dst)):
            raise
    except OSError as exc:
        # EPERM: fs.protected_hardlinks refuses links to a submitter's file; some FUSE/SMB
        # mounts have no hard links at all. The id is reserved, so a rename after the
        # existence check cannot meet a competitor.
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "file exists", str(dst)) from exc
        os.rename(src, dst)
        linked = False
    # The new name must be durable before the old one goes, or a power cut could lose both.
    fsync_dir(dst.parent)
    if linked:
        os.unlink(src)
    if src.parent != dst.parent or linked:
        fsync_dir(src.parent)


def _same_inode(a: Path, b: Path) -> bool:
    sa, sb = os.lstat(a), os.lstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- convenience


@dataclass
class Spool:
    """The functions above bound to one Settings (what the daemon passes around)."""

    settings: Settings

    def ensure_layout(self) -> None:
        ensure_layout(self.settings)

    def claim(self, inbox_path: Path) -> Claimed | None:
        return claim(self.settings, inbox_path)

    def recover(self, *, max_attempts: int | None = None) -> list[Claimed]:
        return recover(self.settings, max_attempts=max_attempts)

    def reserve_id(self, job_id: str, names_for: Callable[[str], list[str]], *, claim_id: str | None = None) -> str:
        return reserve_id(self.settings, job_id, names_for, claim_id=claim_id)

    def release_id(self, job_id: str) -> None:
        release_id(self.settings, job_id)

    def mark_started(self, claimed: Claimed) -> Claimed:
        return mark_started(self.settings, claimed)

    def mark_requeued(self, claimed: Claimed) -> Claimed:
        return mark_requeued(self.settings, claimed)

    def fail_job(self, claimed: Claimed, error: Mapping[str, Any] | Any, *, job_id: str, keep_work: bool = False) -> tuple[Path, Path]:
        return fail_job(self.settings, claimed, error, job_id=job_id, keep_work=keep_work)

    def complete_job(self, claimed: Claimed, job_ids: Iterable[str] = ()) -> None:
        complete_job(self.settings, claimed, job_ids)
