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


def _stalling_peer_env(host: str, **extra: str) -> dict[str, str]:
    """A daemon that reports `host` (and a boot id of its own) and stalls in its first decode."""
    faults = {"pretend_host": host, "stall_after_steps": 1, "stall_s": 120}
    return {"DGXMUSIC_TEST_FAULTS": json.dumps(faults), "OMP_NUM_THREADS": "1", **extra}


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
    remote_env = _stalling_peer_env("node-b", SLURM_JOB_ID="4242")
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


def _plant_ghost(config: Path) -> None:
    """A job claimed by a dead daemon on "node-z" whose clock ran a day ahead: its last heartbeat
    is stamped tomorrow and will never change again."""
    from daemon.core.config import load_settings
    from daemon.spool import owner as owner_mod
    from daemon.spool.claim import claim
    from daemon.spool.layout import ensure_layout
    from daemon.spool.peers import Heartbeat, heartbeat_path

    settings = load_settings(config)
    ensure_layout(settings)
    owner_mod.pretend_host("node-z")
    try:
        (settings.inbox / "ghost.yaml").write_text(
            job_yaml("a job its dead daemon left behind", duration=0.1)
        )
        assert claim(settings, settings.inbox / "ghost.yaml") is not None
        Heartbeat(settings, "node-z-1").beat()
    finally:
        owner_mod.pretend_host(None)
    path = heartbeat_path(settings, "node-z-1")
    data = json.loads(path.read_text())
    data["heartbeat"] += 86400.0
    path.write_text(json.dumps(data))


@pytest.mark.slow  # two daemon starts
@pytest.mark.timeout(300)
def test_heartbeats_judged_by_change_not_by_host_name_or_clock(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Daemon B shares our host name but not our boot id (a cloned VM, a container) and is busy
    with a job; a dead daemon on node-z left a claim and a heartbeat stamped a day ahead. Daemon
    A (peer_timeout_s 3) must take over node-z's job within a few timeouts and leave B's alone
    while B's heartbeat keeps changing. outbox/index.html is squatted by a directory: A keeps
    working and says how to get the page back."""
    spool = tmp_path / "spool"
    (spool / "outbox" / "index.html").mkdir(parents=True)
    common = {"heartbeat_interval_s": 0.5, "rescan_interval_s": 0.5}
    config_a = write_config(tmp_path / "a.yaml", spool, tiny_model_dir, peer_timeout_s=TIMEOUT_S, **common)
    # B waits long before judging peers: node-z's job is A's to take.
    config_b = write_config(tmp_path / "b.yaml", spool, tiny_model_dir, peer_timeout_s=600, **common)
    view = SpoolView(spool)
    twin_env = _stalling_peer_env(socket.gethostname())
    _plant_ghost(config_a)
    with DaemonProcess(config_b, tmp_path / "b.log", env=twin_env) as b:
        b.start()
        view.drop("twin-job.yaml", job_yaml("a job of the clone", duration=0.5))
        view.wait_running("twin-job", 60)
        with DaemonProcess(config_a, tmp_path / "a.log", env={"OMP_NUM_THREADS": "1"}) as a:
            a.start()
            t0 = time.monotonic()
            out = view.wait_outcome("ghost", 60, alive=a)
            taken_after = time.monotonic() - t0
            assert out["status"] == "completed", out
            assert "recovered ghost.yaml from work/" in a.log()
            # Several timeouts more: the clone's job stays with the clone.
            time.sleep(3 * TIMEOUT_S)
            assert "recovered twin-job" not in a.log(), a.log_tail()
            assert b.alive() and view.outcome("twin-job") is None
            assert any((spool / "work").glob("twin-job*.yaml"))
            assert "outbox/index.html is a directory" in a.log() and a.alive()
            print(f"\n[peers] skewed dead peer's job taken {taken_after:.1f} s after start; clone's job kept")
