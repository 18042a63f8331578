"""Inbox pickup: tells the daemon which inbox paths may now be claimed.

Two modes (Settings.watch):

* `inotify` (local filesystems): watchdog's InotifyObserver, reacting to exactly two events:
  close-after-write (`on_closed`: a `cp`, a shell redirect, an editor saving in place is done)
  and moved-to (`on_moved`: an editor's or rsync's temp renamed onto the final name, or a file
  `mv`-ed in from elsewhere on the filesystem; unmatched moves come as moves because the
  observer runs with `generate_full_events`). Not `on_created`: it fires at open(O_CREAT),
  before a single byte is written. Not `on_modified`: it fires for every write(), so the file is
  by definition still being written. A scan at start and every `rescan_interval_s` covers what
  inotify cannot report (files present before start, a queue overflow, a watch lost when the
  inbox was replaced). A scan reports a file once two scans at least `settle_s` apart saw the
  same size, mtime and inode, so it never snatches a file a slow writer is still filling (its
  close-write reports it); only the start scan also takes files whose mtime is `settle_s` old
  at once (dropped while the daemon was down), which delays nothing at start.
* `poll` (NFS/SMB, where inotify sees only local writes): every `poll_interval_s` the inbox is
  listed and a file is reported once its size, mtime and inode stayed the same for `settle_s`
  as observed by us (never by comparing a remote mtime with the local clock).

A file a scan reported that is still there unchanged (its handling failed, e.g. a full disk) is
reported again once per `rescan_interval_s`, not on every poll.

Reports go through one dispatcher thread, so `on_candidate` is never called concurrently with
itself, and a path is not reported again while it waits or while its callback runs; an event
for a path that arrives *during* its callback (a new file under the same name) is delivered
again once the callback returns. The callback should be quick (claim and enqueue).
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileClosedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver

from daemon.core.config import Settings
from daemon.spool.layout import forget_logged, log_once
from daemon.spool.nofollow import Dir
from jobspec.names import folder_problem, is_candidate, is_ignored_name, source_name_for

try:
    from watchdog.observers import inotify_move_event_grouper as _move_grouper
except ImportError:  # watchdog < 6 pairs moves without a delay queue
    _move_grouper = None

# watchdog holds every IN_MOVED_FROM for `delay` (0.5 s) to pair it with its IN_MOVED_TO, and
# every later event waits behind it. Each of our claims (inbox/ -> work/) is such an unpaired
# move, so a drop right after a claim waited ~0.4 s. A rename inside the inbox (an editor's
# save) delivers both halves in the same inotify read, so 20 ms still pairs them.
if _move_grouper is not None:
    _move_grouper.InotifyMoveEventGrouper.delay = 0.02

log = logging.getLogger(__name__)

_STOP = object()
DEEP = "inbox: %s/ is more than one folder deep; only inbox/<folder>/<job>.yaml is read"


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: "InboxWatcher") -> None:
        self._watcher = watcher

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._watcher._consider(Path(os.fsdecode(event.src_path)))

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.dest_path:
            self._watcher._consider(Path(os.fsdecode(event.dest_path)))


class InboxWatcher:
    """Watch `settings.inbox` and call `on_candidate(path)` for each job file ready to claim.

    `start()` launches the threads (observer or poller, rescan, dispatcher); `stop()` joins
    them, waiting for a callback in progress. `scan_now()` asks for a rescan right away (after
    disk space was freed, or on SIGHUP). `clock` is the monotonic clock of the settle check.
    """

    def __init__(
        self,
        settings: Settings,
        on_candidate: Callable[[Path], None],
        *,
        mode: str | None = None,
        rescan_interval_s: float | None = None,
        poll_interval_s: float | None = None,
        settle_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inbox = settings.inbox
        self.mode = mode or settings.watch
        if self.mode not in ("inotify", "poll"):
            raise ValueError(f"watch mode must be 'inotify' or 'poll', not {self.mode!r}")
        self.rescan_interval_s = (
            settings.rescan_interval_s if rescan_interval_s is None else rescan_interval_s
        )
        self.poll_interval_s = settings.poll_interval_s if poll_interval_s is None else poll_interval_s
        self.settle_s = settings.settle_s if settle_s is None else settle_s
        self._on_candidate = on_candidate
        self._clock = clock
        self._lock = threading.Lock()
        self._queued: set[Path] = set()
        self._active: Path | None = None
        self._again: set[Path] = set()
        self._queue: queue.Queue[object] = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._observer: InotifyObserver | None = None
        self._threads: list[threading.Thread] = []
        # name -> ((size, mtime_ns, inode), when a scan first saw that signature, last reported)
        self._seen: dict[str, tuple[tuple[int, int, int], float, float | None]] = {}
        self.scans = 0  # completed scans, for tests and `status`
        self._present: set[str] = set()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("watcher already started")
        self._spawn(self._dispatch_loop, "dgx-music-dispatch")
        if self.mode == "inotify":
            try:
                observer = InotifyObserver(generate_full_events=True)
                observer.schedule(
                    # recursive: inbox/<folder>/ jobs too (deeper entries are refused in _consider)
                    _Handler(self),
                    str(self.inbox),
                    recursive=True,
                    event_filter=[FileClosedEvent, FileMovedEvent],
                )
                observer.start()
                self._observer = observer
            except OSError as exc:
                # Typically the inotify watch/instance limit (ENOSPC/EMFILE). Polling keeps jobs
                # flowing; the operator sees why and can raise fs.inotify.max_user_watches.
                log.error(
                    "inotify on %s failed (%s); falling back to polling every %.1f s",
                    self.inbox,
                    exc,
                    self.poll_interval_s,
                )
                self.mode = "poll"
        self._spawn(self._scan_loop, "dgx-music-rescan")
        log.info("watching %s (%s)", self.inbox, self.mode)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
            self._observer = None
        self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                log.error("watcher thread %s did not stop within %.1f s", thread.name, timeout)
        self._threads = []

    def __enter__(self) -> "InboxWatcher":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def scan_now(self) -> None:
        self._wake.set()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # ----------------------------------------------------------------- reporting

    def _consider(self, path: Path) -> None:
        try:
            parts = path.relative_to(self.inbox).parts
        except ValueError:
            return
        if len(parts) == 2 and not self._folder_ok(parts[0]):
            return
        if len(parts) > 2:
            if not any(is_ignored_name(p) for p in parts):
                rel = "/".join(parts[:-1])
                log_once("deep", rel, DEEP, rel)
            return
        name = parts[-1]
        shown = "/".join(parts)
        if is_candidate(name):
            self._submit(path)
        elif not is_ignored_name(name):
            log_once("other", shown, "inbox: %s is not a job file (*.yaml, *.yml); leaving it alone", shown)

    def _folder_ok(self, folder: str) -> bool:
        if is_ignored_name(folder):
            return False
        problem = folder_problem(folder)
        if problem:
            log_once("folder", folder, "inbox: %s/: %s; its files are not read", folder, problem)
            return False
        return True

    def _submit(self, path: Path) -> None:
        with self._lock:
            if path in self._queued:
                return
            if path == self._active:
                self._again.add(path)
                return
            self._queued.add(path)
        self._queue.put(path)

    def _dispatch_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, Path)
            with self._lock:
                self._queued.discard(item)
                self._active = item
            try:
                self._on_candidate(item)
            except OSError as exc:
                # A full or read-only disk: one line per try, not a traceback per rescan.
                log.error(
                    "cannot take %s from the inbox (%s); it stays there for the next scan",
                    item.name,
                    exc.strerror or exc,
                )
            except Exception:
                log.exception(
                    "handling inbox file %s failed; it stays in the inbox for the next scan", item.name
                )
            finally:
                with self._lock:
                    self._active = None
                    again = item in self._again
                    self._again.discard(item)
            if again and not self._stop.is_set():
                self._submit(item)

    # ----------------------------------------------------------------- scanning

    def _scan_loop(self) -> None:
        interval = self.poll_interval_s if self.mode == "poll" else self.rescan_interval_s
        while not self._stop.is_set():
            try:
                self._scan()
            except Exception:
                log.exception("scanning %s failed; trying again in %.1f s", self.inbox, interval)
            self.scans += 1
            self._wake.wait(interval)
            self._wake.clear()

    def _entries(self) -> list[tuple[str, Path, os.stat_result]] | None:
        """(source name, path, lstat) of the inbox's entries and of its valid subfolders' entries,
        one level deep. A subfolder is listed through its own descriptor, opened without following
        a link (daemon.spool.nofollow), so a folder swapped for a link is never listed."""
        try:
            inbox = Dir.root(self.inbox)
        except FileNotFoundError:
            log_once("inbox", str(self.inbox), "inbox %s does not exist; waiting for it", self.inbox)
            return None
        out: list[tuple[str, Path, os.stat_result]] = []
        with inbox:
            top = list(inbox.entries())
            self._present = {name for name, _st in top}  # what log_once may keep remembering
            for name, st in top:
                path = self.inbox / name
                if stat.S_ISDIR(st.st_mode) and not is_candidate(name):
                    if not self._folder_ok(name):
                        continue
                    try:
                        with inbox.sub(name) as folder:
                            inner = list(folder.entries())
                    except OSError:
                        continue  # gone, or swapped for a link since it was listed
                    for inner_name, inner_st in inner:
                        if stat.S_ISDIR(inner_st.st_mode) and not is_ignored_name(inner_name):
                            rel = f"{name}/{inner_name}"
                            self._present.add(rel)
                            log_once("deep", rel, DEEP, rel)
                            continue
                        out.append((source_name_for(name, inner_name), path / inner_name, inner_st))
                    continue
                out.append((name, path, st))
        return out

    def _scan(self) -> None:
        entries = self._entries()
        if entries is None:
            return
        names = {n for n, _p, _s in entries}
        first_scan = self.scans == 0
        forget_logged(names | self._present)
        now_wall = time.time()
        now = self._clock()
        for name, path, st in entries:
            if not is_candidate(path.name):
                if not is_ignored_name(path.name):
                    log_once(
                        "other", name, "inbox: %s is not a job file (*.yaml, *.yml); leaving it alone", name
                    )
                continue
            if stat.S_ISDIR(st.st_mode):
                log_once(
                    "dir", name, "inbox: %s is a directory; directories are not jobs, leaving it alone", name
                )
                continue
            sig = (st.st_size, st.st_mtime_ns, st.st_ino)
            prev = self._seen.get(name)
            if prev is None or prev[0] != sig:
                self._seen[name] = (sig, now, None)
                # Only the start scan trusts the mtime (files dropped while we were down): later,
                # a recent change means a writer is at work and its close-write will report it.
                if not (
                    self.settle_s <= 0
                    or (first_scan and self.mode == "inotify" and now_wall - st.st_mtime >= self.settle_s)
                ):
                    continue
            elif now - prev[1] < self.settle_s:
                continue
            elif prev[2] is not None and now - prev[2] < self.rescan_interval_s:
                continue  # reported already and still here: its handling failed; retry per rescan
            self._seen[name] = (sig, self._seen[name][1], now)
            self._submit(path)
        for gone in set(self._seen) - names:
            del self._seen[gone]
