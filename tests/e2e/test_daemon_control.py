"""`dgx-music status` and `dgx-music cancel` against a real daemon subprocess.

The daemon runs with the engine's stall fault: a job long enough to reach decode step 300
pauses there for a minute (an interruptible sleep inside the step callback), so it is reliably
"running, part way" while the CLI looks at it; short jobs never reach that step and run at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonProcess, SpoolView, job_yaml, run_cli, wait_until, write_config

LONG_S = 8.0  # 40 frames/s: ~323 decode steps, so the stall at step 300 hits it
STALL_AFTER_STEPS = 300
TIMEOUT_S = 60.0


class Served:
    def __init__(self, daemon: DaemonProcess, spool: SpoolView, config: Path) -> None:
        self.daemon = daemon
        self.spool = spool
        self.config = config


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("daemon-control")
    config = write_config(
        root / "config.yaml",
        root / "spool",
        tiny_model_dir,
        rescan_interval_s=600,
        stop_grace_s=2,
        fault_injection={"stall_after_steps": STALL_AFTER_STEPS, "stall_s": 60},
    )
    daemon = DaemonProcess(config, root / "daemon.log")
    try:
        daemon.start()
        yield Served(daemon, SpoolView(root / "spool"), config)
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.close()


def _running_stalled(sp: SpoolView, job_id: str) -> dict | None:
    for r in sp.running():
        if r.get("job_id") == job_id and float(r.get("percent") or 0) > 0:
            return r
    return None


def _start_long_and_queue(served: Served, long_id: str, queued: list[str]) -> dict:
    sp = served.spool
    sp.drop(f"{long_id}.yaml", job_yaml(f"a long job {long_id} that stalls part way", duration=LONG_S))
    running = wait_until(
        lambda: _running_stalled(sp, long_id), TIMEOUT_S, what=f"{long_id} running", alive=served.daemon
    )
    for job_id in queued:
        sp.drop(f"{job_id}.yaml", job_yaml(f"a short job {job_id} waiting its turn"))
    wait_until(lambda: sp.queued_ids() == queued, TIMEOUT_S, what=f"{queued} queued", alive=served.daemon)
    return running


def _cancel(served: Served, job_id: str) -> dict:
    res = run_cli(served.config, "cancel", job_id, "--timeout", "30")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"cancelled: {served.spool.failed / (job_id + '.error.json')}" in res.stdout, res.stdout
    body = json.loads((served.spool.failed / f"{job_id}.error.json").read_bytes())
    assert body["status"] == "cancelled"
    assert body["error"]["type"] == "cancelled"
    assert body["job_id"] == job_id and body["source_file"] == f"{job_id}.yaml"
    assert (served.spool.failed / f"{job_id}.yaml").exists()  # the job file, for a resubmit
    assert not (served.spool.outbox / f"{job_id}.json").exists()
    return body


def test_status_shows_the_running_job_with_percent_and_the_queue(served: Served) -> None:
    sp = served.spool
    running = _start_long_and_queue(served, "st-long", ["st-q1", "st-q2"])
    assert 0 < running["percent"] < 100
    assert running["frames_total"] > running["frames_done"] > 0

    res = run_cli(served.config, "status", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    (run,) = report["running"]
    assert run["job_id"] == "st-long"
    assert 0 < run["percent"] < 100
    assert isinstance(run["eta_s"], (int, float))
    queued = [e for q in report["queued"] for e in q["queued"]]
    assert [e["job_id"] for e in queued] == ["st-q1", "st-q2"]
    assert [e["position"] for e in queued] == [1, 2]
    assert report["counts"]["work"] == 3

    res = run_cli(served.config, "status")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(line.startswith("running  st-long") and "%" in line and "eta" in line for line in lines), (
        res.stdout
    )
    assert any(line.startswith("queued   st-q1  #1") for line in lines), res.stdout
    assert any(line.startswith("queued   st-q2  #2") for line in lines), res.stdout

    # Clean up for the next test: the long job goes, the short ones then run to completion.
    _cancel(served, "st-long")
    for job_id in ("st-q1", "st-q2"):
        assert sp.wait_outcome(job_id, TIMEOUT_S, alive=served.daemon)["status"] == "completed"
    # The queue file is rewritten within a second of a change.
    wait_until(lambda: sp.queued_ids() == [] and sp.running() == [], 10, what="an idle state")
    res = run_cli(served.config, "status", "--json")
    report = json.loads(res.stdout)
    assert report["running"] == [] and all(q["queued"] == [] for q in report["queued"])
    recent = {e["job_id"]: e["status"] for e in report["recent"]}
    assert recent["st-long"] == "cancelled" and recent["st-q2"] == "completed"


def test_cancel_queued_and_running(served: Served) -> None:
    sp = served.spool
    _start_long_and_queue(served, "cx-long", ["cx-q1", "cx-q2"])

    body = _cancel(served, "cx-q1")  # queued: it never starts
    assert body["started"] is None
    wait_until(lambda: sp.queued_ids() == ["cx-q2"], 10, what="cx-q1 out of the queue")
    assert _running_stalled(sp, "cx-long")  # the running job did not notice

    body = _cancel(served, "cx-long")  # running: interrupted inside its stall
    assert body["started"] is not None
    # The next job runs at once and completes.
    assert sp.wait_outcome("cx-q2", TIMEOUT_S, alive=served.daemon)["status"] == "completed"
    wait_until(lambda: not sp.job_files(sp.work), 10, what="work/ to empty")
    assert not list((sp.state / "cancel").iterdir())  # requests are consumed

    res = run_cli(served.config, "cancel", "no-such-job", "--timeout", "1")
    assert res.returncode == 2
    assert "no queued or running job" in res.stderr


def test_cancel_a_job_running_in_a_shared_batch(served: Served) -> None:
    sp = served.spool
    # Two long jobs of one length queue behind a blocker of another length, so that the worker
    # decodes them together once the blocker goes.
    _start_long_and_queue(served, "bx-blocker", [])
    for job_id in ("bx-a", "bx-b"):
        sp.drop(f"{job_id}.yaml", job_yaml(f"a long job {job_id} sharing a batch", duration=LONG_S + 1))
    wait_until(
        lambda: sp.queued_ids() == ["bx-a", "bx-b"], TIMEOUT_S, what="two jobs queued", alive=served.daemon
    )
    _cancel(served, "bx-blocker")
    running = wait_until(
        lambda: _running_stalled(sp, "bx-a"), TIMEOUT_S, what="bx-a running", alive=served.daemon
    )
    assert running["batch"] == ["bx-a", "bx-b"]

    res = run_cli(served.config, "status")
    lines = res.stdout.splitlines()
    assert any(line.startswith("running  bx-a ") and "%" in line for line in lines), res.stdout
    assert any(line.startswith("running  bx-b ") for line in lines), res.stdout  # its batch-mate too

    _cancel(served, "bx-b")  # not the batch's first job
    # Its batch-mate lost the shared decode, not its turn: it runs again, alone.
    wait_until(
        lambda: _running_stalled(sp, "bx-a"), TIMEOUT_S, what="bx-a running again", alive=served.daemon
    )
    assert sp.outcome("bx-a") is None
    _cancel(served, "bx-a")
    wait_until(lambda: not sp.job_files(sp.work), 10, what="work/ to empty")
