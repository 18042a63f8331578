"""`submit` tells a user whether the job will be picked up: a daemon loading its model (and how
the load goes, in the daemon's log), one serving, one stopping, none. Real daemon, real CLI; the
load and the decode are made slow by the harness's fault injection, so each phase lasts long
enough to be seen."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from daemon_harness import DaemonProcess, SpoolView, job_yaml, run_cli, wait_until, write_config

pytestmark = pytest.mark.slow  # one daemon start with an 8 s load, one stalled job: about 40 s


def phase(sp: SpoolView) -> str | None:
    for path in sp.state.glob("daemon.*.json"):
        try:
            return json.loads(path.read_bytes()).get("phase")
        except (OSError, ValueError):
            return None
    return None


def test_submit_knows_a_daemon_that_is_loading_serving_stopping_or_gone(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = write_config(
        tmp_path / "config.yaml",
        tmp_path / "spool",
        tiny_model_dir,
        stop_grace_s=30,
        fault_injection={"load_stall_s": 8, "stall_after_steps": 2, "stall_s": 6},
    )
    sp = SpoolView(tmp_path / "spool")
    jobs = {}
    for name in ("early", "served", "late", "orphan"):
        jobs[name] = tmp_path / f"{name}.yaml"
        jobs[name].write_text(job_yaml(f"a tune submitted {name}", duration=0.5))
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start(wait_ready=False)
        wait_until(lambda: phase(sp) == "loading", 60, what="the daemon to start loading", alive=daemon)
        early = run_cli(config, "submit", str(jobs["early"]))
        assert early.returncode == 0, early.stderr
        assert "is loading its model" in early.stderr and "no daemon" not in early.stderr, early.stderr

        daemon.wait_ready()
        log = daemon.log()
        # The load is told as it happens: which model from where, how long so far, then the result.
        begin = log.index(f"loading model tiny from {tiny_model_dir} on cpu")
        still = log.index("still loading model tiny: ")
        assert begin < still < log.index("model tiny ready on cpu"), log

        served = run_cli(config, "submit", str(jobs["served"]))
        assert served.returncode == 0 and served.stderr == "", served.stderr

        # `early` runs and stalls; SIGTERM gives it its grace period: the daemon is stopping.
        daemon.wait_log("fault injection: stalling")
        daemon.signal(signal.SIGTERM)
        daemon.wait_log("stopping: no new jobs")
        late = run_cli(config, "submit", str(jobs["late"]))
        assert late.returncode == 0, late.stderr
        assert "is stopping" in late.stderr, late.stderr
        assert "waits in the inbox until a daemon starts again" in late.stderr
        assert daemon.wait_exit(60) == 0, daemon.log_tail()
    orphan = run_cli(config, "submit", str(jobs["orphan"]))
    assert orphan.returncode == 0 and "no daemon is serving" in orphan.stderr, orphan.stderr
    assert {p.name for p in sp.inbox.iterdir()} >= {"late.yaml", "orphan.yaml"}
