"""State files under state/: the rate-limited progress file, queue snapshot, cancel requests and
recent outcomes, read while being written."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from daemon.core.config import Settings, load_settings
from daemon.spool import state
from daemon.spool.layout import ensure_layout
from daemon.spool.state import (
    InvalidJobIdError,
    ProgressWriter,
    cancel_requested,
    clear_cancel,
    pending_cancels,
    read_queues,
    read_recent,
    read_running,
    record_outcome,
    request_cancel,
    running_path,
    write_queue,
)

pytestmark = pytest.mark.timeout(15)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(None, spool=tmp_path / "spool")
    ensure_layout(s)
    return s


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_progress_writer_replaces_the_file_at_most_twice_a_second(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    replaced: list[str] = []
    real_replace = os.replace

    def counting_replace(src: str | Path, dst: str | Path) -> None:
        replaced.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", counting_replace)
    clock = FakeClock()
    pw = ProgressWriter(settings, clock=clock)
    pw.start("song", frames_total=1000)
    # 1,000 progress callbacks over 5 simulated seconds (one per 5 ms).
    per_second: dict[int, int] = {}
    for i in range(1, 1001):
        clock.t += 0.005
        before = len(replaced)
        pw.update(i)
        if len(replaced) > before:
            per_second[int(clock.t - 1000.0 - 1e-9)] = per_second.get(int(clock.t - 1000.0 - 1e-9), 0) + 1
    assert set(replaced) == {"running.json"}
    assert len(replaced) == pw.writes
    assert 10 <= len(replaced) <= 11  # the start write, then one per 0.5 s
    assert max(per_second.values()) <= 2
    state = json.loads(running_path(settings).read_text())
    assert state["job_id"] == "song" and state["frames_total"] == 1000
    assert state["frames_done"] < 1000  # the last updates are pending, not written early
    clock.t += 0.5
    assert pw.flush()
    state = json.loads(running_path(settings).read_text())
    assert state["frames_done"] == 1000 and state["percent"] == 100.0 and state["eta_s"] == 0.0
    assert state["pid"] == os.getpid() and state["host"]
    assert state["started"].endswith("Z")


def test_progress_percent_and_eta(settings: Settings) -> None:
    clock = FakeClock()
    pw = ProgressWriter(settings, clock=clock)
    pw.start("eta", frames_total=400, model="tiny")
    clock.t += 10.0
    assert pw.update(100)
    state = read_running(settings)[0]
    assert state["percent"] == 25.0 and state["eta_s"] == 30.0 and state["model"] == "tiny"
    clock.t += 0.1
    assert not pw.update(200)  # rate-limited: pending, not lost
    clock.t += 0.5
    assert pw.flush()
    assert read_running(settings)[0]["frames_done"] == 200
    pw.finish()
    assert read_running(settings) == []
    with pytest.raises(RuntimeError):
        pw.update(1)


def test_instances_sharing_a_spool_keep_separate_files(settings: Settings) -> None:
    a = ProgressWriter(settings, instance="gpu0")
    b = ProgressWriter(settings, instance="gpu1")
    a.start("one", 10)
    b.start("two", 10)
    assert sorted(r["job_id"] for r in read_running(settings)) == ["one", "two"]
    with pytest.raises(ValueError):
        ProgressWriter(settings, instance="../x")


def _hammer(
    paths: list[str],
    stop: "multiprocessing.synchronize.Event",
    out: "multiprocessing.Queue[tuple[int, list[str]]]",
) -> None:
    reads, errors = 0, []
    while not stop.is_set():
        for p in paths:
            try:
                with open(p, "rb") as fh:
                    raw = fh.read()
            except FileNotFoundError:
                continue
            try:
                json.loads(raw)
                reads += 1
            except ValueError as exc:
                errors.append(f"{p}: {exc}")
    out.put((reads, errors))


def test_state_files_are_valid_json_whenever_a_reader_looks(settings: Settings) -> None:
    # The reader is another process, like `dgx-music status`.
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    out: multiprocessing.Queue[tuple[int, list[str]]] = ctx.Queue()
    paths = [
        str(running_path(settings)),
        str(settings.state_dir / "queue.json"),
        str(settings.state_dir / "recent.json"),
    ]
    reader = ctx.Process(target=_hammer, args=(paths, stop, out))
    reader.start()
    pw = ProgressWriter(settings, min_interval_s=0.0)
    try:
        pw.start("hammer", frames_total=200, prompt="x" * 8000)  # a big file: a torn write would show
        for i in range(1, 201):
            pw.update(i)
            write_queue(
                settings,
                [{"position": n, "job_id": f"j{n}", "priority": "normal"} for n in range(1 + i % 100)],
            )
            if i % 10 == 0:
                record_outcome(settings, {"job_id": f"r{i}", "status": "completed", "note": "y" * 200})
    finally:
        stop.set()
        reads, errors = out.get(timeout=10)
        reader.join(5)
    assert errors == []
    assert reads > 100
    assert pw.writes == 201
    assert read_queues(settings)[0]["queued"][0]["job_id"] == "j0"


def test_cancel_requests(settings: Settings) -> None:
    assert pending_cancels(settings) == []
    path = request_cancel(settings, "song-2")
    assert path == settings.state_dir / "cancel" / "song-2"
    assert json.loads(path.read_text())["job_id"] == "song-2"
    assert cancel_requested(settings, "song-2")
    assert not cancel_requested(settings, "song")
    assert pending_cancels(settings) == ["song-2"]
    # A request older than the job (left from an earlier job with that id) does not count.
    assert not cancel_requested(settings, "song-2", since=time.time() + 60)
    assert cancel_requested(settings, "song-2", since=time.time() - 60)
    clear_cancel(settings, "song-2")
    clear_cancel(settings, "song-2")
    assert not cancel_requested(settings, "song-2")
    for bad in ("../../etc/passwd", "a/b", "..", ".hidden", "", "x" * 300, "a\nb"):
        with pytest.raises(InvalidJobIdError):
            request_cancel(settings, bad)
        assert not cancel_requested(settings, bad)
    assert os.listdir(settings.state_dir / "cancel") == []


def _record_many(spool: str, tag: str, n: int, limit: int) -> None:
    s = load_settings(None, spool=Path(spool))
    for i in range(n):
        record_outcome(s, {"job_id": f"{tag}{i}", "status": "completed"}, limit=limit)


def test_recent_keeps_the_last_50(settings: Settings) -> None:
    _record_many(str(settings.spool), "j", 70, 50)
    assert [r["job_id"] for r in read_recent(settings)] == [f"j{i}" for i in range(20, 70)]


def test_recent_loses_no_entry_to_two_processes_and_a_thread_writing_at_once(settings: Settings) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_record_many, args=(str(settings.spool), tag, 30, 1000)) for tag in ("a", "b")
    ]
    for p in procs:
        p.start()
    thread = threading.Thread(target=_record_many, args=(str(settings.spool), "c", 20, 1000))
    thread.start()
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    thread.join()
    ids = [r["job_id"] for r in read_recent(settings)]
    # A lost read-modify-write would drop entries; each writer's entries keep their order.
    assert sorted(ids) == sorted(
        [f"a{i}" for i in range(30)] + [f"b{i}" for i in range(30)] + [f"c{i}" for i in range(20)]
    )
    for tag in ("a", "b", "c"):
        mine = [int(i[1:]) for i in ids if i[0] == tag]
        assert mine == sorted(mine)


def test_dead_instances_state_files_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    settings = load_settings(None, spool=tmp_path / "spool")
    settings.state_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state.replace_json(
        state.running_path(settings, "dead"), {"job_id": "x", "pid": dead.pid, "host": socket.gethostname()}
    )
    state.write_queue(settings, [], instance="alive")  # this process: alive
    removed = state.remove_dead_instances(settings)
    assert removed == [state.running_path(settings, "dead")]
    assert state.queue_path(settings, "alive").exists()
