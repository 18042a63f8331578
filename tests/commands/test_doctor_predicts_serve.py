"""`dgx-music doctor`'s verdict on a model predicts what `serve` does with it: doctor exit 0 ->
serve reaches READY; doctor exit 1 with the model check failed -> serve exits 69 (EX_UNAVAILABLE)
with the same reason. Both are real subprocesses with the same environment, for a hub model that
is cached, one that is not (offline, and online with a hub that does not answer), and one whose
cached weights were cut short."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from daemon_harness import DaemonProcess, clean_env, dgx_music_command, write_config

from daemon.core.errors import ExitCode
from daemon.spool.layout import SPOOL_DIRS

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_ID = "facebook/musicgen-small"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hub_cache(hf_home: Path, model_dir: Path) -> Path:
    """The layout huggingface_hub writes: refs/main -> snapshots/<commit>/<files>."""
    base = hf_home / "hub" / ("models--" + REPO_ID.replace("/", "--"))
    snap = base / "snapshots" / COMMIT
    shutil.copytree(model_dir, snap)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(COMMIT)
    return snap


def _doctor(config: Path, env: dict[str, str]) -> tuple[int, dict[str, dict[str, str]]]:
    proc = subprocess.run(
        [*dgx_music_command(), "doctor", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        cwd=config.parent,
        timeout=240,
    )
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    return proc.returncode, checks


@pytest.mark.parametrize("case", ["cached", "uncached-offline", "uncached-hub-down", "truncated"])
def test_doctor_verdict_predicts_serve_exit(case: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    if case in ("cached", "truncated"):
        snap = _hub_cache(hf_home, tiny_model_dir)
        if case == "truncated":
            weights = snap / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "uncached-hub-down":
        env.update(HF_HUB_OFFLINE="", HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    for sub in SPOOL_DIRS:  # as install.sh's tmpfiles lay it out: doctor checks it is there
        (tmp_path / "spool" / sub).mkdir(parents=True)
    config = write_config(tmp_path / "config.yaml", tmp_path / "spool", tiny_model_dir)
    text = config.read_text().replace(f"path: {tiny_model_dir}", f"id: {REPO_ID}\n    revision: main")
    config.write_text(text)

    code, checks = _doctor(config, env)
    model = checks["model tiny"]
    others = [c for name, c in checks.items() if c["status"] == "fail" and name != "model tiny"]
    assert not others, others  # the model is the only thing doctor can object to here

    daemon = DaemonProcess(config, tmp_path / "serve.log", env=env).start(wait_ready=False)
    try:
        if case == "cached":
            assert code == 0 and model["status"] == "ok", model
            daemon.wait_ready(180)
            assert daemon.stop() == 0
        else:
            assert code == 1 and model["status"] == "fail", model
            assert "model fetch tiny" in model["fix"] or "remove" in model["fix"], model
            assert daemon.wait_exit(180) == ExitCode.UNAVAILABLE == 69, daemon.log_tail()
            # serve names the reason doctor gave
            assert model["detail"] in daemon.log(), (model["detail"], daemon.log_tail())
    finally:
        if daemon.alive():
            daemon.kill()
    expected = {
        "cached": "cached (0123456789ab)",
        "uncached-offline": "not in the local cache, and HF_HUB_OFFLINE is set",
        "uncached-hub-down": "not in the local cache, and it cannot be downloaded now",
        "truncated": "model.safetensors: truncated",
    }[case]
    assert expected in model["detail"], model
