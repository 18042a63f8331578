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
        tmp_path / "config.yaml",
        tmp_path / "spool",
        tiny_model_dir,
        fault_injection={"stall_after_steps": 5, "stall_s": 3},
    )
    sp = SpoolView(tmp_path / "spool")
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        sp.drop("victim.yaml", job_yaml("a job whose daemon is killed under it", duration=1, seed=42))
        sp.wait_running("victim", TIMEOUT_S, alive=daemon)
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
    # Long jobs pause at decode step 300 for 3 s; the 0.5 s jobs never get that far.
    config = write_config(
        tmp_path / "config.yaml",
        tmp_path / "spool",
        tiny_model_dir,
        max_attempts=2,
        fault_injection={"kill_on_prompt": "KILL-THE-DAEMON", "stall_after_steps": 300, "stall_s": 3},
    )
    sp = SpoolView(tmp_path / "spool")
    crasher = job_yaml("this job KILL-THE-DAEMON whenever it starts")
    kills = 0
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        # While a long job holds the worker, queue a good job, the crasher and another good one
        # (same length: the worker decodes them as one batch, the good one ahead of the crasher).
        sp.drop("blocker.yaml", job_yaml("a long job that keeps the worker busy", duration=8))
        sp.wait_running("blocker", TIMEOUT_S, alive=daemon)
        sp.drop("good-1.yaml", job_yaml("a good job before the crasher"))
        sp.drop("crasher.yaml", crasher)
        sp.drop("good-2.yaml", job_yaml("a good job after the crasher"))
        wait_until(
            lambda: sp.queued_ids() == ["good-1", "crasher", "good-2"],
            TIMEOUT_S,
            what="three jobs queued",
            alive=daemon,
        )

        for _start in range(4):  # a restart policy: bring it back until the crasher is settled
            wait_until(
                lambda: not daemon.alive() or sp.outcome("crasher") is not None,
                120,
                interval=0.1,
                what="a crash or the crasher's outcome",
            )
            if daemon.alive():
                break
            assert daemon.proc is not None and daemon.proc.returncode == -signal.SIGKILL, daemon.log_tail()
            kills += 1
            daemon.start(wait_ready=False)
        assert kills == 2, daemon.full_log()

        body = sp.outcome("crasher")
        assert body is not None
        assert body["status"] == "failed"
        assert body["error"]["type"] == "crashed"
        assert body["attempts"] == 2
        assert body["source_file"] == "crasher.yaml"
        assert (sp.failed / "crasher.yaml").read_text() == crasher  # the original bytes

        # A job that merely shared a decode batch with the crasher is not blamed for its crashes.
        for job_id in ("blocker", "good-1", "good-2"):
            assert sp.wait_outcome(job_id, TIMEOUT_S, alive=daemon)["status"] == "completed", sp.outcome(
                job_id
            )
        by_source = sp.by_source()
        assert sorted(by_source) == ["blocker.yaml", "crasher.yaml", "good-1.yaml", "good-2.yaml"]
        assert all(len(v) == 1 for v in by_source.values()), by_source
        wait_until(lambda: not sp.job_files(sp.work), 10, what="work/ to empty")
        assert daemon.stop() == 0


def test_the_sidecar_is_renamed_in_after_every_audio_file_it_names(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The ordering the crash safety rests on, watched as it happens: inotify reports each name
    that appears in outbox/ in order, and the sidecar's comes after both variations' audio."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers.inotify import InotifyObserver

    config = write_config(tmp_path / "config.yaml", tmp_path / "spool", tiny_model_dir)
    sp = SpoolView(tmp_path / "spool")
    appeared: list[str] = []

    class Names(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.event_type not in ("created", "moved"):
                return
            name = Path(str(getattr(event, "dest_path", "") or event.src_path)).name
            if not name.startswith(".") and name not in appeared:
                appeared.append(name)

    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        observer = InotifyObserver()
        observer.schedule(Names(), str(sp.outbox))
        observer.start()
        try:
            sp.drop("order.yaml", job_yaml("two variations in order", duration=0.5, seed=3, count=2))
            body = sp.wait_outcome("order", TIMEOUT_S, alive=daemon)
            wait_until(lambda: "order.json" in appeared, 10, what="inotify to report the sidecar")
        finally:
            observer.stop()
            observer.join(5)
        assert daemon.stop() == 0
    assert [o["path"] for o in body["outputs"]] == ["order-v1.wav", "order-v2.wav"]
    mine = [n for n in appeared if n.startswith("order")]
    assert mine == ["order-v1.wav", "order-v2.wav", "order.json"], appeared
