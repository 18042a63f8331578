"""Crash chaos: SIGKILL the real daemon at chosen and random moments, restart it, and prove that
every job ends with exactly one outcome, none twice, no partial file visible, no input lost.

Kill moments (cycled, then shuffled by a seeded RNG; the seed is printed, set
DGX_MUSIC_CHAOS_SEED to replay one):
  claim     jobs are renamed into the inbox and the daemon is killed while it claims them
  generate  state/running*.json says a job is decoding
  write     an audio file or dot-temp of a job is in outbox/ but its sidecar is not
  random    any moment 0-1.5 s after READY
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from reliability.daemonproc import (
    DaemonProc,
    assert_exactly_once,
    drop,
    job_yaml,
    outcomes,
    record_figures,
    spool_quiet,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

JOBS = 30
KILLS = 10
MODES = ["claim", "generate", "write", "random", "generate", "write", "claim", "random", "write", "generate"]


def _running(spool: Path) -> bool:
    return any((spool / "state").glob("running*.json"))


def _writing(spool: Path) -> bool:
    outbox = spool / "outbox"
    names = set(os.listdir(outbox))
    for name in names:
        if name.startswith(".") and name.endswith(".tmp"):
            return True
        stem, dot, ext = name.rpartition(".")
        if ext in ("wav", "flac") and f"{stem.split('-v')[0]}.json" not in names:
            return True
    return False


def _wait_moment(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.001)
    return False


def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    seed = int(os.environ.get("DGX_MUSIC_CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
    rng = random.Random(seed)
    print(f"\nchaos seed {seed} (DGX_MUSIC_CHAOS_SEED={seed} replays it)")
    spool = tmp_path / "spool"
    # max_attempts 3: a job may be hit twice by 10 kills and still complete; a third hit fails it as crashed.
    cfg = write_config(tmp_path / "config.yaml", spool, tiny_model_dir, max_attempts=3, rescan_interval_s=1.0)
    inbox = spool / "inbox"
    inbox.mkdir(parents=True)

    jobs = {
        f"chaos{i:02d}": job_yaml(
            f"chaos tune number {i}",
            duration=rng.choice([0.4, 0.6, 0.8, 1.2]),
            seed=i,
            **({"count": 2} if i % 7 == 3 else {}),
        )
        for i in range(JOBS)
    }
    pending = list(jobs)
    rng.shuffle(pending)

    def drop_some(n: int) -> None:
        for _ in range(min(n, len(pending))):
            job_id = pending.pop()
            drop(inbox, f"{job_id}.yaml", jobs[job_id])

    drop_some(12)  # dropped while the daemon is down: picked up at start
    modes = list(MODES[:KILLS])
    rng.shuffle(modes)
    daemon = DaemonProc(cfg, tmp_path / "daemon.log")
    hit: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        for mode in modes:
            daemon.start().wait_ready()
            if spool_quiet(spool) and pending:
                drop_some(3)
            if mode == "claim" and pending:
                drop_some(rng.randint(3, 6))
                time.sleep(rng.uniform(0.0, 0.03))
                got = mode
            elif mode == "generate":
                got = mode if _wait_moment(lambda: _running(spool), 10) else "random"
                time.sleep(rng.uniform(0.0, 0.05))
            elif mode == "write":
                got = mode if _wait_moment(lambda: _writing(spool), 10) else "random"
            else:
                time.sleep(rng.uniform(0.0, 1.5))
                got = "random"
            daemon.kill()
            hit[got] = hit.get(got, 0) + 1
        drop_some(len(pending))
        daemon.start().wait_ready()
        wait_until(
            lambda: outcomes(spool).count() >= JOBS and spool_quiet(spool), 300, what="every job's outcome"
        )
        time.sleep(1.0)  # anything running twice would show up now
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
    wall = time.monotonic() - t0

    got = assert_exactly_once(spool, jobs)
    for job_id, body in got.completed.items():
        assert body["request"]["prompt"] == f"chaos tune number {int(job_id[5:])}"
        assert body["source_file"] == f"{job_id}.yaml"
    for job_id, body in got.failed.items():
        # The only acceptable failure here: the same job was running at max_attempts kills.
        assert body["error"]["type"] == "crashed", body
        assert (spool / "failed" / f"{job_id}.yaml").read_bytes() == jobs[job_id].encode()
    # Hidden dot-temps of killed writers may stay (readers never see them; a start removes
    # the ones older than 10 minutes); nothing else may.
    assert all(Path(t).name.endswith(".tmp") for t in got.temps), got.temps
    log = daemon.log_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:5000]
    figures = {
        "jobs": JOBS,
        "kills": KILLS,
        "restarts": daemon.starts - 1,
        "kill_moments": hit,
        "completed": len(got.completed),
        "failed_crashed": len(got.failed),
        "lost": JOBS - got.count(),
        "duplicated": 0,
        "leftover_dot_temps": len(got.temps),
        "wall_s": round(wall, 1),
        "seed": seed,
    }
    record_figures("crash_chaos", figures)
    assert daemon.starts == KILLS + 1


def test_kill_between_audio_and_sidecar_rewrites_the_job_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The narrowest window, made certain: the daemon dies after a job's audio was renamed into
    outbox/ but before its sidecar was. The restart must neither fail the job on its own leftover
    nor publish it under another id: one result, whole, under the job's id."""
    spool = tmp_path / "spool"
    cfg = write_config(
        tmp_path / "config.yaml",
        spool,
        tiny_model_dir,
        fault_injection={"stall_after_steps": 10, "stall_s": 60},
    )
    daemon = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        daemon.start().wait_ready()
        original = job_yaml("killed while publishing", duration=1.0, seed=8)
        drop(spool / "inbox", "pub.yaml", original)
        assert _wait_moment(lambda: _running(spool), 30), "the job never started"
        daemon.kill()
        # What the killed writer would have left: the audio renamed in, no sidecar yet.
        (spool / "outbox" / "pub.wav").write_bytes(
            b"RIFF\x00\x00\x00\x00WAVE partial audio of the killed attempt"
        )
        write_config(cfg, spool, tiny_model_dir)
        daemon.start().wait_ready()
        wait_until(
            lambda: (spool / "outbox" / "pub.json").exists() and spool_quiet(spool), 60, what="the re-run"
        )
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
    got = assert_exactly_once(spool, {"pub"})
    assert got.completed["pub"]["outputs"][0]["path"] == "pub.wav"
    assert "removed outbox/pub.wav left by the interrupted attempt" in daemon.log_text()
