"""Polling mode with a slow writer (an NFS/SMB inbox), and a clean SIGTERM while idle."""

from __future__ import annotations

import os
import time
from pathlib import Path

from daemon_harness import DaemonProcess, SpoolView, job_yaml, wait_until, write_config


def test_poll_mode_never_reads_a_half_written_job(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(
        tmp_path / "config.yaml",
        tmp_path / "spool",
        tiny_model_dir,
        watch="poll",
        poll_interval_s=0.1,
        settle_s=0.5,
    )
    sp = SpoolView(tmp_path / "spool")
    # Every proper prefix of the file is an invalid job (no prompt yet, or its quote still
    # open), so a premature read would show up as an invalid_job sidecar.
    text = 'duration: 0.5\nseed: 5\nprompt: "written slowly over a network share, piece by piece"'
    chunks = [text[i : i + 12] for i in range(0, len(text), 12)]
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        assert "(poll)" in daemon.log()
        with open(sp.inbox / "slow.yaml", "w") as fh:
            for chunk in chunks:
                fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
                time.sleep(0.3)  # well under settle_s: never stable long enough to be read
                assert sp.by_source() == {}, "read while still being written"
        body = sp.wait_outcome("slow", 60, alive=daemon)
        assert body["status"] == "completed", body
        assert body["request"]["seed"] == 5
        assert [b["job_id"] for b in sp.by_source()["slow.yaml"]] == ["slow"]
        assert sp.job_files(sp.failed) == []
        assert daemon.stop() == 0


def test_sigterm_while_idle_exits_0(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path / "config.yaml", tmp_path / "spool", tiny_model_dir)
    sp = SpoolView(tmp_path / "spool")
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        sp.drop("one.yaml", job_yaml("one job, then idle"))
        assert sp.wait_outcome("one", 60, alive=daemon)["status"] == "completed"
        wait_until(lambda: sp.running() == [], 10, what="the running state to clear")
        t0 = time.monotonic()
        assert daemon.stop(timeout=30) == 0, daemon.log_tail()
        assert time.monotonic() - t0 < 15  # idle: nothing to wait for
        log = daemon.log()
        assert "stopping" in log and log.rstrip().endswith("stopped"), daemon.log_tail()
        assert "Traceback" not in log
        assert sp.running() == []
        assert sp.job_files(sp.work) == [] and sp.job_files(sp.inbox) == []
