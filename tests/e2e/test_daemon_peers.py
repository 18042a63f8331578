"""Two daemons on one spool that look like two machines (one reports another host name and boot
id): `status` shows both hosts from their heartbeats; a killed remote daemon's job is left alone
while its heartbeat is fresh and taken over by the survivor once it is older than peer_timeout_s."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonProcess, SpoolView, job_yaml, run_cli, write_config

TIMEOUT_S = 3.0


@pytest.mark.slow  # two daemon starts: ~40 s on a 2-core box
@pytest.mark.timeout(180)
def test_remote_daemon_shown_by_status_and_its_job_recovered_after_the_timeout(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    spool = tmp_path / "spool"
    config = write_config(
        tmp_path / "config.yaml",
        spool,
        tiny_model_dir,
        heartbeat_interval_s=0.5,
        peer_timeout_s=TIMEOUT_S,
        rescan_interval_s=0.5,
    )
    view = SpoolView(spool)
    # "node-b" stalls in its first decode: it holds a running job when it dies.
    remote_env = {
        "DGXMUSIC_TEST_FAULTS": json.dumps(
            {"pretend_host": "node-b", "stall_after_steps": 1, "stall_s": 120}
        ),
        "SLURM_JOB_ID": "4242",
        "OMP_NUM_THREADS": "1",
    }
    with DaemonProcess(config, tmp_path / "b.log", env=remote_env) as b:
        b.start()
        view.drop("peer-job.yaml", job_yaml("a job the remote daemon dies with", duration=0.5))
        view.wait_running("peer-job", 60)
        with DaemonProcess(config, tmp_path / "a.log", env={"OMP_NUM_THREADS": "1"}) as a:
            a.start()
            report = json.loads(run_cli(config, "status", "--json").stdout)
            hosts = {d["host"]: d for d in report["daemons"]}
            assert set(hosts) == {"node-b", socket.gethostname()}, report["daemons"]
            assert hosts["node-b"]["state"] == "live" and hosts["node-b"]["slurm_job_id"] == "4242"
            assert all(d["state"] == "live" for d in report["daemons"])
            text = run_cli(config, "status").stdout
            assert "host     node-b pid" in text and "slurm job 4242: live" in text, text
            assert "running  peer-job" in text, text

            b.signal(signal.SIGKILL)
            b.wait_exit(10)
            t_kill = time.monotonic()
            # The survivor's recovery runs every 0.5 s; the claim is not touched while the
            # dead daemon's heartbeat is younger than the timeout.
            while time.monotonic() - t_kill < TIMEOUT_S - 1.0:
                assert any((spool / "work").glob("peer-job*.yaml")), "the job left work/ early"
                assert view.outcome("peer-job") is None, "a peer took the job of a live-looking daemon"
                time.sleep(0.1)
            out = view.wait_outcome("peer-job", 60, alive=a)
            recovered_after = time.monotonic() - t_kill
            assert out["status"] == "completed"
            assert "recovered peer-job.yaml from work/" in a.log()
            report = json.loads(run_cli(config, "status", "--json").stdout)
            states = {d["host"]: d["state"] for d in report["daemons"]}
            assert states["node-b"] == "stale", report["daemons"]
            assert not [r for r in report["running"] if r.get("host") == "node-b"]
            assert TIMEOUT_S - 1.0 <= recovered_after < TIMEOUT_S + 30
            print(
                f"\n[peers] remote job recovered {recovered_after:.1f} s after kill -9 "
                f"(peer_timeout_s={TIMEOUT_S})"
            )
