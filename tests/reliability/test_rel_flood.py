"""Flood: many tiny jobs at once, through one daemon and then two sharing a spool.

Every job done exactly once; the daemon's resident memory at the end within 10% of what it was
after the first 50 jobs; its open file descriptors stable; jobs dropped while it is down all
picked up at start.

Sizes: CI runs FLOOD_JOBS=300 (one daemon) and 300 (two daemons) of 0.1 s audio, which fits a
2-core runner; DGX_MUSIC_RELIABILITY_FULL=1 runs the issue's 1,000 + 1,000 (see
docs/reliability.md for a full run's figures).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from reliability.daemonproc import (
    DaemonProc,
    assert_exactly_once,
    full_run,
    job_yaml,
    record_figures,
    spool_quiet,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

FLOOD_JOBS = 1000 if full_run() else 300
SHARED_JOBS = 1000 if full_run() else 300
DOWN_JOBS = 100 if full_run() else 40
BASELINE_AFTER = 50
DURATION_S = 0.1


def _stage(staging: Path, prefix: str, n: int) -> dict[str, Path]:
    """Write n job files to a staging dir on the spool's filesystem (renamed in all at once later)."""
    staging.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        job_id = f"{prefix}{i:04d}"
        path = staging / f"{job_id}.yaml"
        path.write_text(job_yaml(f"flood tune {prefix} {i}", duration=DURATION_S, seed=i))
        out[job_id] = path
    return out


def _release(staged: dict[str, Path], inbox: Path) -> float:
    t0 = time.monotonic()
    for job_id, path in staged.items():
        os.rename(path, inbox / f"{job_id}.yaml")
    return time.monotonic() - t0


def _done_count(spool: Path, prefix: str) -> int:
    return sum(1 for n in os.listdir(spool / "outbox") if n.startswith(prefix) and n.endswith(".json"))


def test_flood_one_daemon_then_jobs_dropped_while_down(tmp_path: Path, tiny_model_dir: Path) -> None:
    spool = tmp_path / "spool"
    cfg = write_config(tmp_path / "config.yaml", spool, tiny_model_dir)
    daemon = DaemonProc(cfg, tmp_path / "daemon.log")
    staged = _stage(spool / "staging", "f", FLOOD_JOBS)
    t0 = time.monotonic()
    try:
        daemon.start().wait_ready()
        time.sleep(0.5)
        _release(staged, spool / "inbox")
        wait_until(
            lambda: _done_count(spool, "f") >= BASELINE_AFTER, 300, interval=0.02, what="the first 50 jobs"
        )
        rss_base, fds_base = daemon.rss_kb(), daemon.fd_count()
        samples = []
        deadline = time.monotonic() + 1500
        while _done_count(spool, "f") < FLOOD_JOBS or not spool_quiet(spool):
            assert daemon.alive(), daemon.log_text()[-3000:]
            assert time.monotonic() < deadline, f"flood not done: {_done_count(spool, 'f')}/{FLOOD_JOBS}"
            samples.append((daemon.rss_kb(), daemon.fd_count()))
            time.sleep(1.0)
        time.sleep(1.0)  # settle: the last writes closed, idle loop ran
        rss_end, fds_end = daemon.rss_kb(), daemon.fd_count()
        flood_s = time.monotonic() - t0
        assert daemon.stop() == 0

        # Down: drop jobs, then start; the start scan takes them all.
        down = _stage(spool / "staging", "down", DOWN_JOBS)
        _release(down, spool / "inbox")
        daemon.start().wait_ready()
        wait_until(
            lambda: _done_count(spool, "down") >= DOWN_JOBS and spool_quiet(spool),
            300,
            what="jobs dropped while down",
        )
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()

    got = assert_exactly_once(spool, set(staged) | set(down))
    assert not got.failed
    growth = (rss_end - rss_base) / rss_base
    peak_fds = max(f for _, f in samples) if samples else fds_end
    record_figures(
        "flood",
        {
            "jobs": FLOOD_JOBS,
            "jobs_dropped_while_down": DOWN_JOBS,
            "rss_after_50_kb": rss_base,
            "rss_end_kb": rss_end,
            "rss_growth_pct": round(100 * growth, 2),
            "fds_after_50": fds_base,
            "fds_end": fds_end,
            "fds_peak": peak_fds,
            "wall_s": round(flood_s, 1),
            "jobs_per_s": round(FLOOD_JOBS / flood_s, 1),
        },
    )
    assert growth <= 0.10, f"RSS grew {100 * growth:.1f}% ({rss_base} -> {rss_end} kB)"
    # Stable: back where it was once idle, and never more than a handful above it while busy.
    assert fds_end <= fds_base + 2, f"fds {fds_base} -> {fds_end}"
    assert peak_fds <= fds_base + 16, f"fds peaked at {peak_fds} (baseline {fds_base})"


def test_flood_two_daemons_sharing_one_spool(tmp_path: Path, tiny_model_dir: Path) -> None:
    spool = tmp_path / "spool"
    cfg = write_config(tmp_path / "config.yaml", spool, tiny_model_dir)
    a = DaemonProc(cfg, tmp_path / "a.log")
    b = DaemonProc(cfg, tmp_path / "b.log")
    staged = _stage(spool / "staging", "s", SHARED_JOBS)
    t0 = time.monotonic()
    try:
        a.start()
        b.start()
        a.wait_ready()
        b.wait_ready()
        _release(staged, spool / "inbox")
        wait_until(
            lambda: _done_count(spool, "s") >= SHARED_JOBS and spool_quiet(spool),
            1500,
            interval=0.5,
            what="the shared flood",
        )
        time.sleep(1.0)
        wall = time.monotonic() - t0
        assert a.alive() and b.alive()
        assert a.stop() == 0 and b.stop() == 0
    finally:
        a.cleanup()
        b.cleanup()
    got = assert_exactly_once(spool, set(staged))
    assert not got.failed
    done_a = a.log_text().count(" completed: ")
    done_b = b.log_text().count(" completed: ")
    assert done_a + done_b == SHARED_JOBS, (done_a, done_b)
    assert done_a > 0 and done_b > 0, f"one daemon did all the work: {done_a} / {done_b}"
    record_figures(
        "flood_shared",
        {"jobs": SHARED_JOBS, "daemon_a": done_a, "daemon_b": done_b, "wall_s": round(wall, 1)},
    )
