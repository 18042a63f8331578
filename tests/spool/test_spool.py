"""The spool's file mechanics on real files: names, the rename claim (threads and processes
racing), rejection of links and FIFOs without touching them, recovery after a real dead owner,
result-id reservation, and the failed/ and completed paths."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from daemon import spool
from daemon.core.config import Settings, load_settings
from daemon.spool import (
    Claimed,
    Owner,
    SpoolError,
    claim,
    clean_stale_temps,
    complete_job,
    current_owner,
    ensure_layout,
    error_sidecar,
    fail_job,
    mark_requeued,
    mark_started,
    owner_alive,
    recover,
    release_id,
    reserve,
    reserve_id,
)
from daemon.spool.records import write_meta
from jobspec.names import default_job_id, is_candidate, is_valid_job_id

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(None, spool=tmp_path / "spool", max_attempts=2)
    ensure_layout(s)
    return s


def drop(settings: Settings, name: str, data: bytes = b"prompt: a calm piano\nduration: 4\n") -> Path:
    path = settings.inbox / name
    path.write_bytes(data)
    return path


def work_listing(settings: Settings) -> tuple[list[str], list[str]]:
    names = sorted(os.listdir(settings.work))
    return [n for n in names if n.endswith(".yaml")], [n for n in names if n.endswith(".meta.json")]


# ------------------------------------------------------------------ layout and names


def test_ensure_layout_creates_every_directory(tmp_path: Path) -> None:
    s = load_settings(None, spool=tmp_path / "deep" / "spool")
    ensure_layout(s)
    for d in (
        s.inbox,
        s.work,
        s.outbox,
        s.failed,
        s.state_dir,
        s.state_dir / "cancel",
        s.state_dir / "reserved",
    ):
        assert d.is_dir(), d
    ensure_layout(s)  # idempotent


def test_ensure_layout_refuses_directories_on_two_filesystems(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the test's tmp dir")
    other = shm / f"dgx-spool-test-{os.getpid()}"
    other.mkdir()
    try:
        s = load_settings(None, spool=tmp_path / "spool")
        s.spool.mkdir()
        (s.spool / "outbox").symlink_to(other)
        with pytest.raises(SpoolError, match="different filesystems"):
            ensure_layout(s)
    finally:
        other.rmdir()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("song.yaml", True),
        ("song.YML", True),
        ("a.b.c.yml", True),
        (".song.yaml", False),
        (".song.yaml.swp", False),
        ("song.yaml~", False),
        ("song.yaml.swp", False),
        ("song.yaml.tmp", False),
        ("song.yaml.part", False),
        ("song.yaml.crdownload", False),
        ("#song.yaml#", False),
        (".~lock.song.yaml#", False),
        ("~$song.yaml", False),
        (".song.yaml.AbCdE", False),
        ("song.txt", False),
        ("song.json", False),
        (".yaml", False),
        ("yaml", False),
    ],
)
def test_is_candidate(name: str, expected: bool) -> None:
    assert is_candidate(name) is expected


def test_default_id_is_always_a_valid_id() -> None:
    # One rule for every file name: rejected symlinks and FIFOs get the id a job file would.
    assert default_job_id("song.yaml") == "song"
    assert default_job_id("my song (1).yml") == "my-song--1-"
    assert default_job_id("...evil..name.yaml") == "evil.name"
    assert default_job_id(".yaml") == "job"
    assert is_valid_job_id(default_job_id("ü" * 300 + ".yaml"))


# ------------------------------------------------------------------ claim


def test_claim_moves_the_file_and_records_the_claim(settings: Settings) -> None:
    data = b"prompt: lo-fi beat\nduration: 8\n"
    src = drop(settings, "beat.yaml", data)
    mtime = src.stat().st_mtime
    c = claim(settings, src)
    assert c is not None
    assert not src.exists()
    assert c.work_path.parent == settings.work and c.work_path.read_bytes() == data
    assert c.source_name == "beat.yaml" and c.stem == "beat"
    assert c.submitted_at == pytest.approx(mtime)
    meta = json.loads(c.meta_path.read_text())
    assert meta["source_name"] == "beat.yaml"
    assert meta["claim_id"] == c.claim_id and meta["attempts"] == 0 and meta["running"] is False
    assert meta["owner"]["pid"] == os.getpid()
    # The file is gone from the inbox: a second claim (another daemon) gets nothing.
    assert claim(settings, src) is None


def test_same_stem_twice_never_collides_in_work(settings: Settings) -> None:
    a = claim(settings, drop(settings, "x.yaml", b"one"))
    b = claim(settings, drop(settings, "x.yml", b"two"))
    c = claim(settings, drop(settings, "x.yaml", b"three"))
    assert a and b and c
    assert len({a.work_path, b.work_path, c.work_path}) == 3
    assert sorted(p.read_bytes() for p in (a.work_path, b.work_path, c.work_path)) == [
        b"one",
        b"three",
        b"two",
    ]


def test_claim_ignores_names_that_are_not_jobs(settings: Settings) -> None:
    for name in (".x.yaml", "x.yaml.part", "notes.txt"):
        p = drop(settings, name)
        assert claim(settings, p) is None
        assert p.exists()


@pytest.mark.timeout(5)
def test_fifo_in_inbox_is_rejected_without_blocking(settings: Settings) -> None:
    fifo = settings.inbox / "pipe.yaml"
    os.mkfifo(fifo)
    assert claim(settings, fifo) is None  # would hang forever if anything opened it
    moved = settings.failed / "pipe.yaml"
    assert stat.S_ISFIFO(os.lstat(moved).st_mode)
    assert not os.path.lexists(fifo)
    err = json.loads((settings.failed / "pipe.error.json").read_text())
    assert err["error"]["type"] == "invalid_job" and "FIFO" in err["error"]["message"]
    assert err["source_file"] == "pipe.yaml" and err["status"] == "failed"
    assert work_listing(settings) == ([], [])


@pytest.mark.timeout(5)
def test_symlink_is_moved_to_failed_and_its_target_never_touched(settings: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.yaml"
    secret.write_bytes(b"prompt: do not read me\n")
    before = os.stat(secret)
    trap = outside / "trap"  # a FIFO target: following the link to read it would block the test
    os.mkfifo(trap)
    links = {"link.yaml": secret, "trap.yaml": trap}
    for name, target in links.items():
        (settings.inbox / name).symlink_to(target)
        assert claim(settings, settings.inbox / name) is None
    for name, target in links.items():
        moved = settings.failed / name
        assert moved.is_symlink() and os.readlink(moved) == str(target)
        err = json.loads((settings.failed / name.replace(".yaml", ".error.json")).read_text())
        assert err["error"]["type"] == "invalid_job"
        assert "symlinks are not accepted" in err["error"]["message"]
    after = os.stat(secret)
    assert secret.read_bytes() == b"prompt: do not read me\n"
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (
        before.st_mtime_ns,
        before.st_size,
        before.st_ino,
    )
    assert sorted(os.listdir(outside)) == ["secret.yaml", "trap"]


def test_directory_with_a_job_name_is_left_alone_and_logged_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    d = settings.inbox / "folder.yaml"
    d.mkdir()
    caplog.set_level("WARNING", logger="daemon.spool.layout")
    assert claim(settings, d) is None
    assert claim(settings, d) is None
    assert d.is_dir()
    assert sum("folder.yaml is a directory" in r.getMessage() for r in caplog.records) == 1


def test_read_bytes_stops_one_byte_past_the_limit(settings: Settings) -> None:
    c = claim(settings, drop(settings, "big.yaml", b"#" * 100_000))
    assert c is not None
    assert len(c.read_bytes(1000)) == 1001
    assert len(c.read_bytes(200_000)) == 100_000


def _claim_all(
    spool_dir: str,
    names: list[str],
    threads: int,
    barrier_timeout: float,
    out: "multiprocessing.Queue[list[str]]",
) -> None:
    s = load_settings(None, spool=Path(spool_dir))
    got: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def run(offset: int) -> None:
        barrier.wait(barrier_timeout)
        order = names[offset:] + names[:offset]
        for name in order:
            c = claim(s, s.inbox / name)
            if c is not None:
                with lock:
                    got.append(c.source_name)

    ts = [threading.Thread(target=run, args=(i * 5,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(got)


@pytest.mark.timeout(30)
def test_claim_race_threads_and_processes_claim_each_file_exactly_once(settings: Settings) -> None:
    names = [f"job{i:02d}.yaml" for i in range(40)]
    for n in names:
        drop(settings, n, n.encode())
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[list[str]] = ctx.Queue()
    procs = [
        ctx.Process(target=_claim_all, args=(str(settings.spool), names, 4, 10.0, out)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    # 8 more threads in this process race the two processes' 4 threads each.
    _claim_all(str(settings.spool), names, 8, 10.0, out)
    results = [out.get(timeout=20) for _ in range(3)]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    claimed = [n for r in results for n in r]
    assert sorted(claimed) == names  # every file once, none twice
    works, metas = work_listing(settings)
    assert len(works) == 40 and len(metas) == 40  # losers removed their meta files
    assert os.listdir(settings.inbox) == []
    assert sorted(p.read_bytes().decode() for p in settings.work.glob("*.yaml")) == names


# ------------------------------------------------------------------ recovery


def _run_in_child(code: str, settings: Settings) -> str:
    """Run `code` in a fresh Python process (it exits: a really dead owner) and return stdout."""
    prelude = (
        "from pathlib import Path\n"
        "from daemon.core.config import load_settings\n"
        "from daemon.spool import *\n"
        f"s = load_settings(None, spool=Path({str(settings.spool)!r}), "
        f"max_attempts={settings.max_attempts})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.timeout(30)
def test_recover_counts_crashes_of_running_jobs_and_flags_them_at_max_attempts(settings: Settings) -> None:
    drop(settings, "boom.yaml", b"prompt: crashes the daemon\n")
    drop(settings, "calm.yaml", b"prompt: was only queued\n")
    # A daemon claims both, starts "boom", and dies (the child exits without finishing).
    _run_in_child(
        "c = claim(s, s.inbox / 'boom.yaml'); mark_started(s, c)\nclaim(s, s.inbox / 'calm.yaml')\n", settings
    )
    first = {c.source_name: c for c in recover(settings)}
    assert set(first) == {"boom.yaml", "calm.yaml"}
    boom, calm = first["boom.yaml"], first["calm.yaml"]
    assert (boom.attempts, boom.crashes, boom.crashed) == (1, 1, False)
    assert (calm.attempts, calm.crashes, calm.crashed) == (0, 0, False)  # queued jobs carry no blame
    assert boom.work_path.read_bytes() == b"prompt: crashes the daemon\n"
    assert boom.owner == current_owner()
    meta = json.loads(boom.meta_path.read_text())
    assert meta["crashes"] == 1 and meta["running"] is False and meta["source_name"] == "boom.yaml"
    assert meta["owner"]["pid"] == os.getpid()
    # This process now owns them: recovering again (e.g. a periodic call) takes nothing.
    assert recover(settings) == []
    works, metas = work_listing(settings)
    assert len(works) == 2 and len(metas) == 2

    # Hand both to a second daemon that starts "boom" again and dies too.
    _run_in_child(
        "got = {c.source_name: c for c in recover(s)}\n"
        "assert len(got) == 0, got\n",  # alive owner (this test process): not stolen
        settings,
    )
    for c in (boom, calm):  # pretend this process died: rewrite the owner to a dead one
        dead = Owner(
            host=c.owner.host,
            pid=_dead_pid(),
            start_ticks=None,
            boot_id=c.owner.boot_id,
            pid_ns=c.owner.pid_ns,
        )
        write_meta(Claimed(**{**c.__dict__, "owner": dead, "running": c is boom}))
    out = _run_in_child(
        "got = {c.source_name: c for c in recover(s)}\n"
        "print(got['boom.yaml'].crashes, got['boom.yaml'].crashed, "
        "got['calm.yaml'].crashes, got['calm.yaml'].crashed)\n",
        settings,
    )
    assert out.split() == ["2", "True", "0", "False"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_owner_alive_rules() -> None:
    me = current_owner()
    assert owner_alive(me, me=me)
    dead = Owner(me.host, _dead_pid(), None, me.boot_id, me.pid_ns)
    assert not owner_alive(dead, me=me)
    reused = Owner(me.host, me.pid, (me.start_ticks or 0) + 1, me.boot_id, me.pid_ns)
    assert not owner_alive(reused, me=me)  # our pid, but not the process that claimed
    assert not owner_alive(Owner(me.host, me.pid, me.start_ticks, "another-boot", me.pid_ns), me=me)
    # Another machine on a shared spool, or another container: never judged dead.
    assert owner_alive(Owner("other-host", 1, None, "another-boot", None), me=me)
    assert owner_alive(Owner(me.host, 999_999, None, me.boot_id, "pid:[1]"), me=me)


def test_recover_takes_over_a_meta_less_work_file_only_after_a_grace_period(settings: Settings) -> None:
    stray = settings.work / "stray.1234abcd.yaml"
    stray.write_bytes(b"prompt: moved here by hand\n")
    assert recover(settings) == []  # could be a claim in progress elsewhere: wait
    got = recover(settings, orphan_grace_s=0)
    assert [c.source_name for c in got] == ["stray.yaml"]
    assert got[0].work_path.read_bytes() == b"prompt: moved here by hand\n"


def test_recover_cleans_orphan_meta_and_dead_reservations(settings: Settings) -> None:
    dead = current_owner().__dict__ | {"pid": _dead_pid(), "start_ticks": None}
    orphan = settings.work / ".gone.deadbeef.meta.json"
    orphan.write_text(json.dumps({"claim_id": "c1", "owner": dead, "source_name": "gone.yaml"}))
    res = settings.state_dir / "reserved"
    (res / "stale").write_text(json.dumps({"claim_id": "c1", "owner": dead}))
    (res / "live").write_text(json.dumps({"claim_id": "c2", "owner": current_owner().to_json()}))
    recover(settings)
    assert not orphan.exists()
    assert sorted(os.listdir(res)) == ["live"]


def test_mark_requeued_means_no_crash_is_counted(settings: Settings) -> None:
    c = claim(settings, drop(settings, "stop.yaml"))
    assert c is not None
    c = mark_requeued(settings, mark_started(settings, c))
    meta = json.loads(c.meta_path.read_text())
    assert meta["attempts"] == 1 and meta["running"] is False


# ------------------------------------------------------------------ id reservation


def audio_names(job_id: str) -> list[str]:
    return [f"{job_id}-v1.wav", f"{job_id}-v2.wav"]


def test_reserve_id_skips_names_taken_on_disk_and_in_flight(settings: Settings) -> None:
    assert reserve_id(settings, "song", audio_names) == "song"
    assert reserve_id(settings, "song", audio_names) == "song-2"  # "song" is in flight
    (settings.outbox / "song-3-v2.wav").write_bytes(b"")  # one of the names it would write
    (settings.failed / "song-4.error.json").write_bytes(b"{}")
    assert reserve_id(settings, "song", audio_names) == "song-5"
    release_id(settings, "song")
    assert reserve_id(settings, "song", audio_names) == "song"
    (settings.outbox / "fresh.json").write_bytes(b"{}")
    assert reserve_id(settings, "fresh", lambda i: [f"{i}.wav"]) == "fresh-2"
    with pytest.raises(ValueError):
        reserve_id(settings, "../evil", audio_names)


def test_reservations_are_born_with_their_claim_and_empty_leftovers_expire(settings: Settings) -> None:
    # A kill between creating a reservation and writing it used to leave an empty file that
    # named no claim: the recovered job then lost its id to `<id>-2`.
    assert reserve_id(settings, "tune", audio_names, claim_id="c1") == "tune"
    record = json.loads((settings.state_dir / "reserved" / "tune").read_bytes())
    assert record["claim_id"] == "c1"
    assert not [
        p for p in (settings.state_dir / "reserved").iterdir() if p.name.startswith(".")
    ]  # no temp left
    empty = settings.state_dir / "reserved" / "old"
    empty.write_bytes(b"")
    assert reserve_id(settings, "old", audio_names) == "old-2"  # fresh: maybe being written
    os.utime(empty, (time.time() - 60, time.time() - 60))
    assert reserve_id(settings, "old", audio_names) == "old"  # a leftover of a killed writer


def test_reserve_id_is_unique_under_concurrency(settings: Settings) -> None:
    got: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def run() -> None:
        barrier.wait(5)
        for _ in range(3):
            i = reserve_id(settings, "same", audio_names)
            with lock:
                got.append(i)

    ts = [threading.Thread(target=run) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(got, key=lambda x: int(x.split("-")[1]) if "-" in x else 1) == ["same"] + [
        f"same-{n}" for n in range(2, 25)
    ]


def _reserve_in_child(spool_dir: str, n: int, out: "multiprocessing.Queue[list[str]]") -> None:
    s = load_settings(None, spool=Path(spool_dir))
    out.put([reserve_id(s, "shared", audio_names) for _ in range(n)])


@pytest.mark.timeout(20)
def test_reserve_id_two_processes_never_pick_the_same_id(settings: Settings) -> None:
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[list[str]] = ctx.Queue()
    procs = [ctx.Process(target=_reserve_in_child, args=(str(settings.spool), 6, out)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [i for _ in procs for i in out.get(timeout=15)]
    for p in procs:
        p.join(5)
    assert len(got) == 12 and len(set(got)) == 12
    assert sorted(os.listdir(settings.state_dir / "reserved")) == sorted(got)


def test_recovered_claim_gets_its_reserved_id_back(settings: Settings) -> None:
    assert reserve_id(settings, "again", audio_names, claim_id="claim-1") == "again"
    reserve._reserved.clear()  # a restarted daemon has an empty in-process set
    assert reserve_id(settings, "again", audio_names, claim_id="claim-1") == "again"
    assert reserve_id(settings, "again", audio_names, claim_id="claim-2") == "again-2"
    # The crash came after the job's result was written: the recovered claim still gets "again"
    # (so it can see the outcome is there), everyone else skips it.
    (settings.outbox / "again.json").write_bytes(b"{}")
    reserve._reserved.clear()
    assert not spool.outcome_exists(settings, "again-2")
    assert reserve_id(settings, "again", audio_names, claim_id="claim-1") == "again"
    assert spool.outcome_exists(settings, "again")
    release_id(settings, "again")
    assert reserve_id(settings, "again", audio_names, claim_id="claim-1") == "again-3"


# ------------------------------------------------------------------ outcomes


def _err(c: Claimed, job_id: str, error_type: str = "invalid_job") -> dict[str, object]:
    return error_sidecar(
        job_id=job_id,
        source_file=c.source_name,
        error_type=error_type,
        message="duration: must be > 0",
        details=[{"loc": "duration", "line": 2, "msg": "must be > 0"}],
        hint="use a positive number of seconds",
        submitted_at=c.submitted_at,
        started_at=None,
        finished_at=time.time(),
        attempts=c.attempts,
    )


def test_fail_job_keeps_the_original_bytes_and_writes_the_sidecar(settings: Settings) -> None:
    data = b"prompt: x\nduration: -1   # \xff odd byte kept as is\n"
    c = claim(settings, drop(settings, "bad.yaml", data))
    assert c is not None
    (settings.failed / "bad.yaml").write_bytes(b"an older failure")  # never overwritten
    job_id = reserve_id(settings, "bad", lambda i: [f"{i}.yaml"])
    assert job_id == "bad-2"
    yaml_path, err_path = fail_job(settings, c, _err(c, job_id), job_id=job_id)
    assert yaml_path.read_bytes() == data
    assert (settings.failed / "bad.yaml").read_bytes() == b"an older failure"
    err = json.loads(err_path.read_text())
    assert err["job_id"] == "bad-2" and err["source_file"] == "bad.yaml"
    assert err["error"]["details"][0]["line"] == 2 and err["finished"].endswith("Z")
    assert work_listing(settings) == ([], [])
    assert not (settings.state_dir / "reserved" / "bad-2").exists()


def test_fail_job_keep_work_copies_for_the_rest_of_a_batch(settings: Settings) -> None:
    c = claim(settings, drop(settings, "batch.yaml", b"jobs: [...]\n"))
    assert c is not None
    job_id = reserve_id(settings, "batch.2", lambda i: [f"{i}.yaml"])
    fail_job(settings, c, _err(c, job_id, "generation_error"), job_id=job_id, keep_work=True)
    assert (settings.failed / "batch.2.yaml").read_bytes() == b"jobs: [...]\n"
    assert c.work_path.exists() and c.meta_path.exists()
    complete_job(settings, c, ["batch.1"])
    assert work_listing(settings) == ([], [])


def test_fail_job_after_a_crash_between_link_and_unlink_finishes_the_move(settings: Settings) -> None:
    c = claim(settings, drop(settings, "half.yaml", b"prompt: half moved\n"))
    assert c is not None
    os.link(c.work_path, settings.failed / "half.yaml")  # the state a crash would leave
    fail_job(settings, c, _err(c, "half"), job_id="half")
    assert (settings.failed / "half.yaml").read_bytes() == b"prompt: half moved\n"
    assert not c.work_path.exists()


def test_clean_stale_temps_removes_only_old_dot_temps(settings: Settings) -> None:
    old = settings.outbox / ".x.wav.0123456789ab.tmp"
    new = settings.outbox / ".y.wav.0123456789ab.tmp"
    keep = settings.outbox / "x.wav"
    for p in (old, new, keep):
        p.write_bytes(b"data")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert clean_stale_temps(settings) == [old]
    assert new.exists() and keep.exists()


def test_clean_stale_temps_also_cleans_the_results_of_inbox_subfolders(settings: Settings) -> None:
    an_hour_ago = time.time() - 3600
    stale = [
        settings.outbox / "band" / ".x.wav.0123456789ab.tmp",
        settings.failed / "band" / ".x.json.0a.tmp",
    ]
    kept = [
        settings.outbox / "band" / "x.wav",
        settings.failed / "band" / ".x.yaml.0123456789ab.cancelling",  # a user's file on its way
        settings.outbox / ".hidden" / ".y.wav.0123456789ab.tmp",  # not a results folder
    ]
    for p in stale + kept:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"data")
        os.utime(p, (an_hour_ago, an_hour_ago))
    assert sorted(clean_stale_temps(settings)) == sorted(stale)
    assert all(p.exists() for p in kept)
