"""`serve` tells systemd why it stopped: 78 (EX_CONFIG) for a config or spool that only an edit
can fix, 69 (EX_UNAVAILABLE) for a model that cannot be loaded. Real daemon subprocesses."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import clean_env, write_config

from daemon.core.errors import ExitCode


def serve(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(),
        timeout=240,
    )


def test_invalid_config_exits_78(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("spool: /tmp/x\nmax_durration: 10\n")
    res = serve(cfg, tmp_path)
    assert res.returncode == ExitCode.CONFIG == 78, res.stderr
    assert f"{cfg}:2: max_durration: unknown key" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_config_exits_78(tmp_path: Path) -> None:
    res = serve(tmp_path / "nope.yaml", tmp_path)
    assert res.returncode == 78, res.stderr
    assert "config file not found" in res.stderr


def test_unusable_spool_exits_78(tmp_path: Path, tiny_model_dir: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    cfg = write_config(tmp_path / "config.yaml", blocker / "spool", tiny_model_dir)
    res = serve(cfg, tmp_path)
    assert res.returncode == 78, res.stderr[-3000:]
    assert str(blocker) in res.stderr and "Traceback" not in res.stderr


def test_truncated_checkpoint_exits_69(tmp_path: Path, tiny_model_dir: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    if not weights.is_file():
        pytest.fail(f"the tiny model has no model.safetensors: {sorted(p.name for p in broken.iterdir())}")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cfg = write_config(tmp_path / "config.yaml", tmp_path / "spool", broken)
    res = serve(cfg, tmp_path)
    assert res.returncode == ExitCode.UNAVAILABLE == 69, res.stderr[-3000:]
    assert "cannot load model tiny" in res.stderr and "ModelLoadError" in res.stderr
    assert "ready: watching" not in res.stderr
