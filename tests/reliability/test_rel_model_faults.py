"""Model faults: a missing or corrupted checkpoint stops `serve` with ModelLoadError in the log
and a non-zero exit (so systemd's restart backoff applies), and `doctor` says so with exit 1;
an injected CUDA out-of-memory splits the batch and the job still completes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability.daemonproc import (
    DaemonProc,
    assert_exactly_once,
    clean_env,
    drop,
    job_yaml,
    record_figures,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _broken_checkpoints(tmp_path: Path, tiny_model_dir: Path) -> dict[str, Path]:
    missing = tmp_path / "models" / "missing"  # never created
    corrupt = tmp_path / "models" / "corrupt"
    shutil.copytree(tiny_model_dir, corrupt)
    weights = corrupt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:4096] = b"\xde\xad\xbe\xef" * ((4096 - 8) // 4)  # the header: unreadable, same size
    weights.write_bytes(bytes(data))
    truncated = tmp_path / "models" / "truncated"
    shutil.copytree(tiny_model_dir, truncated)
    w = truncated / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return {"missing": missing, "corrupt": corrupt, "truncated": truncated}


@pytest.mark.parametrize("kind", ["missing", "corrupt", "truncated"])
def test_broken_checkpoint_fails_serve_with_model_load_error(
    kind: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    model = _broken_checkpoints(tmp_path, tiny_model_dir)[kind]
    cfg = write_config(tmp_path / "config.yaml", tmp_path / "spool", model)
    daemon = DaemonProc(cfg, tmp_path / "serve.log")
    t0 = time.monotonic()
    daemon.start()
    try:
        rc = daemon.wait_exit(180)
    finally:
        daemon.cleanup()
    log = daemon.log_text()
    # Non-zero, and not a crash: one CRITICAL line naming the error, no traceback.
    assert rc == 69, log  # EX_UNAVAILABLE: the unit retries it with back-off
    assert "ModelLoadError" in log, log[-3000:]
    assert "CRITICAL cannot load model tiny" in log
    assert "Traceback" not in log, log[-3000:]
    assert "ready: watching" not in log
    record_figures(
        f"model_fault_{kind}", {"serve_exit": rc, "seconds_to_exit": round(time.monotonic() - t0, 1)}
    )


@pytest.mark.parametrize(
    "kind",
    ["missing", "corrupt", "truncated"],
)
def test_doctor_reports_a_broken_checkpoint_with_exit_1(
    kind: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    model = _broken_checkpoints(tmp_path, tiny_model_dir)[kind]
    cfg = write_config(tmp_path / "config.yaml", tmp_path / "spool", model)
    doctor = subprocess.run(
        [sys.executable, "-m", "daemon", "doctor", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=300,
    )
    out = doctor.stdout + doctor.stderr
    assert doctor.returncode == 1, out
    line = next((ln for ln in out.splitlines() if "model tiny" in ln), "")
    assert "FAIL" in line.upper(), out


def test_injected_cuda_oom_splits_the_batch_and_the_job_completes(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    spool = tmp_path / "spool"
    cfg = write_config(tmp_path / "config.yaml", spool, tiny_model_dir, fault_injection={"oom_once": True})
    daemon = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        daemon.start().wait_ready()
        drop(spool / "inbox", "oom.yaml", job_yaml("out of memory once", duration=0.5, seed=4, count=4))
        wait_until(lambda: (spool / "outbox" / "oom.json").exists(), 120, what="the OOM job's result")
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
    got = assert_exactly_once(spool, {"oom"})
    body = got.completed["oom"]
    assert [o["path"] for o in body["outputs"]] == [f"oom-v{i}.wav" for i in range(1, 5)]
    assert [o["seed"] for o in body["outputs"]] == [4, 5, 6, 7]
    log = daemon.log_text()
    assert "out of memory with a batch of 4 rows: retrying as 2 + 2" in log, log[-3000:]
    assert "job oom completed" in log
    record_figures("model_fault_oom", {"rows": 4, "split": "2 + 2", "completed": True})
    assert json.loads((spool / "outbox" / "oom.json").read_bytes())["status"] == "completed"
