"""The commands a submitter runs around a daemon: `submit --wait`, `status`, `cancel`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from daemon_harness import (
    DaemonProcess,
    SpoolView,
    job_yaml,
    run_cli,
    wait_until,
    write_config,
)


def _spool_dirs(root: Path) -> None:
    for d in ("inbox", "work", "outbox", "failed", "state", "library"):
        (root / d).mkdir(parents=True, exist_ok=True)


def test_without_a_daemon_submit_warns_and_cancel_moves_the_inbox_file_to_failed(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = write_config(tmp_path / "config.yaml", tmp_path / "spool", tiny_model_dir)
    _spool_dirs(tmp_path / "spool")
    sp = SpoolView(tmp_path / "spool")
    job = tmp_path / "waiting.yaml"
    job.write_text("# kept byte for byte\n" + job_yaml("nobody will play this one", duration=0.5))
    sub = run_cli(config, "submit", str(job))
    assert sub.returncode == 0, sub.stderr
    assert "no daemon is serving" in sub.stderr
    assert (sp.inbox / "waiting.yaml").is_file()

    st = run_cli(config, "status")
    assert "no daemon is serving this spool" in st.stdout

    cancel = run_cli(config, "cancel", "waiting")
    assert cancel.returncode == 0, cancel.stderr
    assert "cancelled:" in cancel.stdout
    assert sp.job_files(sp.inbox) == []
    assert (sp.failed / "waiting.yaml").read_bytes() == job.read_bytes()
    err = json.loads((sp.failed / "waiting.error.json").read_text())
    assert err["status"] == "cancelled" and err["error"]["type"] == "cancelled"
    assert err["source_file"] == "waiting.yaml"
    again = run_cli(config, "cancel", "waiting")
    assert again.returncode == 2  # nothing left to cancel, and it says why
    assert f"job 'waiting' has already been cancelled: see {sp.failed / 'waiting.error.json'}" in again.stderr


def test_cancel_finds_a_waiting_job_in_an_inbox_subfolder_and_files_it_under_that_folder(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = write_config(tmp_path / "config.yaml", tmp_path / "spool", tiny_model_dir)
    _spool_dirs(tmp_path / "spool")
    sp = SpoolView(tmp_path / "spool")
    (sp.inbox / "band").mkdir()
    body = "# kept byte for byte\n" + job_yaml("a riff for the band", duration=0.5)
    (sp.inbox / "band" / "riff.yaml").write_text(body)
    (sp.inbox / ".hidden").mkdir()  # never read by the watcher, so never searched either
    (sp.inbox / ".hidden" / "riff.yaml").write_text(body)

    cancel = run_cli(config, "cancel", "riff")
    assert cancel.returncode == 0, cancel.stderr
    assert "cancelled:" in cancel.stdout
    assert not (sp.inbox / "band" / "riff.yaml").exists()
    assert (sp.failed / "band" / "riff.yaml").read_text() == body
    err = json.loads((sp.failed / "band" / "riff.error.json").read_text())
    assert err["status"] == "cancelled" and err["source_file"] == "band/riff.yaml"
    assert not (sp.failed / "riff.yaml").exists()
    assert (sp.inbox / ".hidden" / "riff.yaml").is_file()
    assert run_cli(config, "cancel", "riff").returncode == 2  # nothing left to cancel


@pytest.mark.slow  # a daemon, a stalled job and four CLI runs: about half a minute
def test_status_and_wait_show_queue_positions_and_the_daemons_eta(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # Every decode of more than 60 steps (1.5 s of audio) stalls until cancelled: the queue behind
    # it stands still long enough to look at.
    config = write_config(
        tmp_path / "config.yaml",
        tmp_path / "spool",
        tiny_model_dir,
        fault_injection={"stall_after_steps": 60, "stall_s": 60},
    )
    sp = SpoolView(tmp_path / "spool")
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        # One job first: the daemon learns its speed, so the queue gets ETAs.
        sp.drop("warm.yaml", job_yaml("a warm up for the estimate", duration=0.5))
        assert sp.wait_outcome("warm", 60, alive=daemon)["status"] == "completed"
        sp.drop("slow.yaml", job_yaml("this one stalls until cancelled", duration=3.0))
        sp.wait_running("slow", 30, alive=daemon)
        sp.drop("q1.yaml", job_yaml("first in the queue", duration=0.5))
        sp.drop("q2.yaml", job_yaml("second in the queue", duration=1.0))
        wait_until(lambda: sp.queued_ids() == ["q1", "q2"], 20, what="two queued jobs", alive=daemon)

        def queued_lines() -> list[str]:
            out = run_cli(config, "status").stdout
            lines = [ln for ln in out.splitlines() if ln.startswith("queued")]
            return lines if len(lines) == 2 and all("eta" in ln for ln in lines) else []

        lines = wait_until(queued_lines, 20, interval=0.5, what="status with ETAs", alive=daemon)
        assert "q1  #1" in lines[0] and "q2  #2" in lines[1], lines
        # One way to write an ETA, for the running job and the queue alike.
        out = run_cli(config, "status").stdout
        etas = re.findall(r"\beta\b\S* ?\S*", out)
        assert etas and all(re.fullmatch(r"eta \d+(s|min)|eta \d+\.\dh", e) for e in etas), out
        queue = json.loads(next(sp.state.glob("queue*.json")).read_text())["queued"]
        assert [e["source_file"] for e in queue] == ["q1.yaml", "q2.yaml"]
        assert queue[0]["eta_s"] < queue[1]["eta_s"]

        # submit --wait with stderr not a terminal: plain lines, the daemon's ETA, then a timeout.
        job = tmp_path / "q3.yaml"
        job.write_text(job_yaml("third, waited for", duration=0.75))
        waited = run_cli(config, "submit", str(job), "--wait", "--timeout", "4", timeout=60)  # stderr: a pipe
        assert waited.returncode == 1, waited.stderr  # timed out: the stalled job holds the queue
        progress = [ln for ln in waited.stderr.splitlines() if ln.startswith("waiting:")]
        assert progress and "\r" not in waited.stderr and "\x1b" not in waited.stderr
        assert any("queued 1 (#3)" in ln and "eta" in ln for ln in progress), waited.stderr
        assert sum("eta" in ln for ln in progress[-1:]) == 1
        assert "no daemon is serving" not in waited.stderr
        assert "timed out" in waited.stderr

        assert run_cli(config, "cancel", "slow").returncode == 0
        for job_id in ("q1", "q2", "q3"):
            assert sp.wait_outcome(job_id, 60, alive=daemon)["status"] == "completed"
        assert sp.outcome("slow")["status"] == "cancelled"

        # Cancelling what has finished says how it ended and where its result is.
        done = run_cli(config, "cancel", "q1")
        assert done.returncode == 2
        assert f"job 'q1' has already completed: its result is {sp.outbox / 'q1.json'}" in done.stderr
        sp.drop("nomodel.yaml", job_yaml("names a model nobody has", duration=0.5, model="nope"))
        sp.wait_outcome("nomodel", 60, alive=daemon)
        failed = run_cli(config, "cancel", "nomodel")
        assert failed.returncode == 2
        assert "job 'nomodel' has already failed (unknown_model: model 'nope'" in failed.stderr
        assert str(sp.failed / "nomodel.error.json") in failed.stderr
        assert daemon.stop() == 0
