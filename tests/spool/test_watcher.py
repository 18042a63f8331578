"""Pickup through a real watchdog inotify observer (and the polling loop) on real files, with the
drop styles users have: cp, an editor's write-then-rename, rsync's dot-temp, a slow writer."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.core.config import Settings, load_settings
from daemon.spool import claim, ensure_layout
from daemon.spool.watcher import InboxWatcher

pytestmark = pytest.mark.timeout(10)


class Recorder:
    """on_candidate that records each report with the file's size at that moment."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, float]] = []
        self.cond = threading.Condition()

    def __call__(self, path: Path) -> None:
        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            size = -1
        with self.cond:
            self.seen.append((path.name, size, time.monotonic()))
            self.cond.notify_all()

    def names(self) -> list[str]:
        with self.cond:
            return [n for n, _, _ in self.seen]

    def wait_for(self, name: str, timeout: float = 3.0) -> tuple[str, int, float]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for entry in self.seen:
                    if entry[0] == name:
                        return entry
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{name} was not reported; got {self.names()}")
                self.cond.wait(left)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A long rescan interval: what inotify mode reports here, the observer reported.
    s = load_settings(
        None, spool=tmp_path / "spool", rescan_interval_s=3600, settle_s=0.3, poll_interval_s=0.05
    )
    ensure_layout(s)
    return s


@pytest.fixture
def watch(settings: Settings) -> Iterator[Callable[..., tuple[InboxWatcher, Recorder]]]:
    started: list[InboxWatcher] = []

    def start(
        mode: str = "inotify", callback: Callable[[Path], None] | None = None, **kw: float
    ) -> tuple[InboxWatcher, Recorder]:
        rec = Recorder()
        w = InboxWatcher(settings, callback or rec, mode=mode, **kw)
        w.start()
        started.append(w)
        _wait(lambda: w.scans >= 1)
        return w, rec

    yield start
    for w in started:
        w.stop()


def _wait(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


class ManualClock:
    """The settle check's clock, moved only by the test: what a scan sees does not depend on how
    long this busy machine took between two lines."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _quiet(settings: Settings, rec: Recorder, w: InboxWatcher) -> None:
    """Wait until every event before this moment was handled: a sentinel file dropped now is
    reported after them (one observer thread, one dispatch queue, in order), and a rescan ran."""
    name = f"sentinel{len(rec.seen)}-{time.monotonic_ns()}.yaml"
    (settings.inbox / name).write_bytes(b"prompt: sentinel\n")
    rec.wait_for(name)
    _settle_scan(w)


def _names(rec: Recorder) -> list[str]:
    return [n for n in rec.names() if not n.startswith("sentinel")]


def _settle_scan(w: InboxWatcher) -> None:
    """Force one full rescan and wait until it completed."""
    n = w.scans
    w.scan_now()
    _wait(lambda: w.scans > n)


def test_cp_style_write_is_reported_once_when_closed(settings: Settings, watch) -> None:
    w, rec = watch()
    path = settings.inbox / "cp.yaml"
    with open(path, "wb") as fh:
        fh.write(b"prompt: first half ")
        fh.flush()
        _quiet(settings, rec, w)  # an open, half-written file: on_created/on_modified have fired by now
        assert _names(rec) == []  # and a rescan left a file written moments ago alone
        fh.write(b"second half\n")
    name, size, _ = rec.wait_for("cp.yaml")
    assert size == len(b"prompt: first half second half\n")
    _quiet(settings, rec, w)
    assert _names(rec) == ["cp.yaml"]


def test_editor_write_then_rename_is_reported_under_the_final_name_only(settings: Settings, watch) -> None:
    w, rec = watch()
    tmp = settings.inbox / ".song.yaml.swp"
    tmp.write_bytes(b"prompt: edited in vim\n")
    os.rename(tmp, settings.inbox / "song.yaml")
    rec.wait_for("song.yaml")
    _quiet(settings, rec, w)
    assert _names(rec) == ["song.yaml"]


def test_rsync_dot_temp_then_rename(settings: Settings, watch) -> None:
    _, rec = watch()
    tmp = settings.inbox / ".beat.yaml.AbCdE1"
    with open(tmp, "wb") as fh:
        for _ in range(5):
            fh.write(b"# chunk\n")
    os.rename(tmp, settings.inbox / "beat.yaml")
    _, size, _ = rec.wait_for("beat.yaml")
    assert size == 40
    assert rec.names() == ["beat.yaml"]


def test_move_in_from_outside_the_inbox_is_reported(settings: Settings, watch) -> None:
    _, rec = watch()
    staged = settings.spool / "staged.yaml"  # same filesystem, not watched
    staged.write_bytes(b"prompt: staged\n")
    os.rename(staged, settings.inbox / "staged.yaml")
    rec.wait_for("staged.yaml")


def test_files_present_at_start_are_reported_by_the_first_scan(settings: Settings, watch) -> None:
    for name in ("a.yaml", "b.yml"):
        p = settings.inbox / name
        p.write_bytes(b"prompt: was here before\n")
        os.utime(p, (time.time() - 5, time.time() - 5))
    _, rec = watch()
    rec.wait_for("a.yaml")
    rec.wait_for("b.yml")


def test_ignored_names_directories_and_other_files_are_never_reported(
    settings: Settings, watch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    w, rec = watch()
    ignored = [
        ".hidden.yaml",
        "x.yaml~",
        "x.yaml.part",
        "x.yaml.tmp",
        "x.yaml.swp",
        "#x.yaml#",
        ".~lock.x.yaml#",
        "~$x.yaml",
    ]
    for name in [*ignored, "notes.txt"]:
        (settings.inbox / name).write_bytes(b"prompt: never read\n")
    (settings.inbox / "dir.yaml").mkdir()
    old = time.time() - 5
    for name in [*ignored, "notes.txt"]:
        os.utime(settings.inbox / name, (old, old))
    _settle_scan(w)
    _settle_scan(w)
    (settings.inbox / "real.yaml").write_bytes(b"prompt: real\n")
    rec.wait_for("real.yaml")
    assert rec.names() == ["real.yaml"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("notes.txt is not a job file" in m for m in messages) == 1  # logged once, not per scan
    assert sum("dir.yaml is a directory" in m for m in messages) == 1


def test_poll_mode_waits_for_a_slow_writer_to_settle(settings: Settings, watch) -> None:
    clock = ManualClock()
    w, rec = watch(mode="poll", settle_s=0.3, poll_interval_s=0.05, clock=clock)
    path = settings.inbox / "slow.yaml"
    chunk = b"# a slow upload over SMB\n"
    with open(path, "wb") as fh:
        for _ in range(8):
            fh.write(chunk)
            fh.flush()
            _settle_scan(w)  # a scan saw this size
            clock.advance(0.2)  # a gap shorter than settle_s
            _settle_scan(w)
            assert rec.names() == [], "reported while still being written"
    clock.advance(0.09)  # the last size held for 0.29 s, less than settle_s: not yet
    _settle_scan(w)
    assert rec.names() == []
    clock.advance(0.02)  # size and mtime held for the settle time
    _, size, _ = rec.wait_for("slow.yaml")
    assert size == 8 * len(chunk)
    clock.advance(0.1)
    _settle_scan(w)
    _settle_scan(w)
    assert rec.names() == ["slow.yaml"]  # still there, still stable: reported once while pending


def test_poll_mode_reports_again_after_a_failed_handling(settings: Settings, watch) -> None:
    calls: list[str] = []

    def flaky(path: Path) -> None:
        calls.append(path.name)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")

    clock = ManualClock()
    w, _ = watch(
        mode="poll", callback=flaky, settle_s=0.0, poll_interval_s=0.05, rescan_interval_s=0.2, clock=clock
    )
    (settings.inbox / "retry.yaml").write_bytes(b"prompt: retried\n")
    _wait(lambda: len(calls) == 1)
    for _ in range(5):  # polls within one rescan interval: no second try
        _settle_scan(w)
    assert calls == ["retry.yaml"]
    clock.advance(0.2)  # a rescan interval later: tried again
    _wait(lambda: len(calls) == 2)
    for _ in range(3):
        _settle_scan(w)
    assert calls == ["retry.yaml", "retry.yaml"]


def test_a_path_is_not_reported_twice_while_pending_but_again_when_new(settings: Settings, watch) -> None:
    release = threading.Event()
    calls: list[str] = []

    def slow(path: Path) -> None:
        calls.append(path.name)
        if path.name == "block.yaml" and len(calls) == 1:
            release.wait(5)

    w, _ = watch(callback=slow)
    (settings.inbox / "block.yaml").write_bytes(b"1")
    _wait(lambda: calls == ["block.yaml"])
    # While the callback for block.yaml runs, queue.yaml gets three close-writes: one report.
    for n in range(3):
        (settings.inbox / "queue.yaml").write_bytes(b"x" * n)
    # And block.yaml is replaced by a new file of the same name: reported again afterwards.
    (settings.inbox / "block.yaml").write_bytes(b"2")
    # The events arrived: queue.yaml waits in the queue once, block.yaml is marked to go again.
    _wait(lambda: settings.inbox / "queue.yaml" in w._queued and settings.inbox / "block.yaml" in w._again)
    release.set()
    _wait(lambda: len(calls) >= 3)
    # Nothing more comes: a file dropped now is reported after anything still on its way.
    (settings.inbox / "last.yaml").write_bytes(b"3")
    _wait(lambda: "last.yaml" in calls)
    assert sorted(calls) == ["block.yaml", "block.yaml", "last.yaml", "queue.yaml"]


def test_watcher_feeding_claim_end_to_end(settings: Settings) -> None:
    claimed: list[str] = []
    w = InboxWatcher(settings, lambda p: claimed.append(c.source_name) if (c := claim(settings, p)) else None)
    with w:
        for i in range(10):
            (settings.inbox / f"j{i}.yaml").write_bytes(b"prompt: burst\n")
        _wait(lambda: len(claimed) == 10)
    assert sorted(claimed) == sorted(f"j{i}.yaml" for i in range(10))
    assert os.listdir(settings.inbox) == []


def test_stop_joins_every_thread(settings: Settings) -> None:
    before = {t.name for t in threading.enumerate()}
    w = InboxWatcher(settings, lambda p: None)
    w.start()
    w.stop()
    leftover = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert not [n for n in leftover if n.startswith("dgx-music")], leftover
    assert not any("Observer" in n or "Emitter" in n for n in leftover), leftover
