"""Crash safety with a real daemon subprocess: `kill -9` mid-job then a restart finishes the
job; a job that kills the daemon every time it starts ends as `crashed` after `max_attempts`
restarts (the way systemd's Restart= would bring it back), and the other jobs still complete.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from daemon_harness import DaemonProcess, SpoolView, job_yaml, wait_until, write_config

TIMEOUT_S = 60.0


def test_kill_9_mid_job_then_restart_completes_the_job(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Every generation pauses at step 5 for 3 s: a window in which the job is surely mid-run.
    config = write_config(
        tmp_path / "config.yaml", tmp_path / "spool", tiny_model_dir,
        fault_injection={"stall_after_steps": 5, "stall_s": 3},
    )
    sp = SpoolView(tmp_path / "spool")
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        sp.drop("victim.yaml", job_yaml("a job whose daemon is killed under it", duration=1, seed=42))
        wait_until(lambda: any(r.get("job_id") == "victim" for r in sp.running()), TIMEOUT_S,
                   what="victim running", alive=daemon)
        assert daemon.kill() == -signal.SIGKILL

        # The claim survived the kill, marked as running (a crash blamed on it).
        (meta_path,) = sp.work.glob(".*.meta.json")
        meta = json.loads(meta_path.read_bytes())
        assert meta["source_name"] == "victim.yaml" and meta["running"] is True and meta["attempts"] == 1
        assert sp.outcome("victim") is None

        daemon.start()
        body = sp.wait_outcome("victim", TIMEOUT_S, alive=daemon)
        assert body["status"] == "completed", body
        assert body["job_id"] == "victim"  # its reserved id came back, not victim-2
        assert body["source_file"] == "victim.yaml"
        assert body["request"]["seed"] == 42
        assert "recovered" in daemon.log()
        wait_until(lambda: not sp.job_files(sp.work), 10, what="work/ to empty")
        assert sp.job_files(sp.failed) == []
        assert daemon.stop() == 0


def test_job_that_kills_the_daemon_every_time_ends_crashed(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(
        tmp_path / "config.yaml", tmp_path / "spool", tiny_model_dir,
        max_attempts=2, fault_injection={"kill_on_prompt": "KILL-THE-DAEMON"},
    )
    sp = SpoolView(tmp_path / "spool")
    sp.inbox.mkdir(parents=True)
    crasher = job_yaml("this job KILL-THE-DAEMON whenever it starts")
    # Dropped before the first start: the start scan takes them all, in no particular order.
    (sp.inbox / "good-1.yaml").write_text(job_yaml("a good job before the crasher"))
    (sp.inbox / "crasher.yaml").write_text(crasher)
    (sp.inbox / "good-2.yaml").write_text(job_yaml("a good job after the crasher"))

    kills = 0
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        for _start in range(4):  # a restart policy: bring it back until the crasher is settled
            daemon.start(wait_ready=False)
            wait_until(lambda: not daemon.alive() or sp.outcome("crasher") is not None, 120,
                       interval=0.1, what="a crash or the crasher's outcome")
            if daemon.alive():
                break
            assert daemon.proc is not None and daemon.proc.returncode == -signal.SIGKILL, daemon.log_tail()
            kills += 1
        assert kills == 2, daemon.full_log()

        body = sp.outcome("crasher")
        assert body is not None
        assert body["status"] == "failed"
        assert body["error"]["type"] == "crashed"
        assert body["attempts"] == 2
        assert body["source_file"] == "crasher.yaml"
        assert (sp.failed / "crasher.yaml").read_text() == crasher  # the original bytes

        for job_id in ("good-1", "good-2"):
            assert sp.wait_outcome(job_id, TIMEOUT_S, alive=daemon)["status"] == "completed"
        by_source = sp.by_source()
        assert sorted(by_source) == ["crasher.yaml", "good-1.yaml", "good-2.yaml"]
        assert all(len(v) == 1 for v in by_source.values()), by_source
        wait_until(lambda: not sp.job_files(sp.work), 10, what="work/ to empty")
        assert daemon.stop() == 0
