"""`dgx-music cancel` against spool state written as a daemon writes it, without a daemon: the
moments a live daemon passes through too quickly to hit on purpose."""

from __future__ import annotations

import json
from pathlib import Path

from daemon_harness import run_cli

from daemon.core.config import Settings
from daemon.spool.layout import ensure_layout
from daemon.spool.state import ProgressWriter


def _spool(tmp_path: Path) -> tuple[Path, Settings]:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"spool: {tmp_path / 'spool'}\n")
    settings = Settings(spool=tmp_path / "spool")
    ensure_layout(settings)
    return cfg, settings


def test_a_published_job_of_a_batch_still_publishing_has_already_completed(tmp_path: Path) -> None:
    cfg, settings = _spool(tmp_path)
    # This process stands in for the daemon: its running entry names the whole batch until the
    # batch's last job is published, and q1's sidecar is already out.
    ProgressWriter(settings).start("q0", 100, batch=["q0", "q1"])
    (settings.outbox / "q1.json").write_text(json.dumps({"job_id": "q1", "status": "completed"}))
    res = run_cli(cfg, "cancel", "q1", "--timeout", "1")
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"job 'q1' has already completed: its result is {settings.outbox / 'q1.json'}" in res.stderr
    assert not (settings.state_dir / "cancel" / "q1").exists()
    # The batch's job still running is cancelled as before: the request is written for its daemon.
    res = run_cli(cfg, "cancel", "q0", "--timeout", "0.2")
    assert res.returncode == 0 and "has not confirmed yet" in res.stdout, res.stdout + res.stderr
    assert (settings.state_dir / "cancel" / "q0").exists()


def test_a_name_that_is_not_a_job_id_names_no_file(tmp_path: Path) -> None:
    cfg, settings = _spool(tmp_path)
    # A result outside outbox/ that `outbox/../x.json` would reach.
    (settings.spool / "x.json").write_text(json.dumps({"status": "completed"}))
    res = run_cli(cfg, "cancel", "../x")
    assert res.returncode == 2
    assert "'../x' is not a job id" in res.stderr and "completed" not in res.stderr, res.stderr
