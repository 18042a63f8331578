"""`dgx-music config` as a user runs it: a real file, real .env files, a real environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from daemon_harness import clean_env


def config_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "config", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(**env),
        timeout=120,
    )


def test_file_dotenv_and_environment_merge_key_by_key(tmp_path: Path) -> None:
    etc, work = tmp_path / "etc", tmp_path / "work"
    etc.mkdir()
    work.mkdir()
    cfg = etc / "config.yaml"
    cfg.write_text(
        "spool: /srv/spool\n"
        "models:\n"
        "  small: {id: facebook/musicgen-small, revision: main}\n"
        "  tiny: {path: /srv/models/tiny}\n"
        "max_duration: 120\n"
        "log_level: ERROR\n"
    )
    (etc / ".env").write_text("DGX_MUSIC_MAX_DURATION=200\nDGX_MUSIC_LOG_LEVEL=WARNING\n")
    # The working directory's .env picks the file and beats the one beside it.
    (work / ".env").write_text(f"DGX_MUSIC_CONFIG={cfg}\nDGX_MUSIC_LOG_LEVEL=DEBUG\n")
    res = config_cli(work, "--json", "--show-origin", DGX_MUSIC_MODELS__SMALL__REVISION="x")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    s, origin = doc["settings"], doc["origin"]
    assert doc["config_file"] == str(cfg)
    assert s["models"] == {
        "small": {"id": "facebook/musicgen-small", "revision": "x", "adapters": {}},
        "tiny": {"path": "/srv/models/tiny", "revision": "main", "adapters": {}},
    }
    assert (s["spool"], s["max_duration"], s["log_level"]) == ("/srv/spool", 200.0, "DEBUG")
    assert origin["models"]["small"]["revision"] == "environment DGX_MUSIC_MODELS__SMALL__REVISION"
    assert origin["models"]["small"]["id"] == f"file {cfg}:3"
    assert origin["spool"] == f"file {cfg}:1"
    assert origin["max_duration"] == f"dotenv {etc / '.env'}:1 DGX_MUSIC_MAX_DURATION"
    assert origin["log_level"] == f"dotenv {work / '.env'}:2 DGX_MUSIC_LOG_LEVEL"
    assert origin["device"] == "default"

    plain = config_cli(work, "--json")
    assert plain.returncode == 0, plain.stderr
    values = json.loads(plain.stdout)
    assert set(values) == set(s) and "settings" not in values  # one object, keys as in the file

    text = config_cli(work, "--show-origin")
    assert f"max_duration = 200.0    # dotenv {etc / '.env'}:1 DGX_MUSIC_MAX_DURATION" in text.stdout


def test_invalid_file_is_refused_with_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("device: cpu\nmax_attempts: 3\ndevice: cuda\n")
    res = config_cli(tmp_path, "--config", str(cfg))
    assert res.returncode == 2
    assert f"{cfg}:3: device: duplicate key 'device' (first set on line 1)" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_misspelt_environment_variable_is_named_not_ignored(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("max_batch: 2\n")
    res = config_cli(tmp_path, "--json", f"--config={cfg}", DGX_MUSIC_MAXBATCH="4", DGX_MUSIC_FROBNICATE="1")
    assert res.returncode == 0, res.stderr  # a warning: the environment is not only ours
    assert json.loads(res.stdout)["max_batch"] == 2
    warning = "environment variable DGX_MUSIC_MAXBATCH sets nothing and is ignored"
    assert f"{warning} (did you mean DGX_MUSIC_MAX_BATCH?)" in res.stderr
    assert "DGX_MUSIC_FROBNICATE sets nothing" in res.stderr and "nested keys joined by __" in res.stderr
    # The names that do set something, and the one that picks the file, are not warned about.
    quiet = config_cli(tmp_path, "--json", DGX_MUSIC_CONFIG=str(cfg), DGX_MUSIC_MODELS__TINY__PATH="/m")
    assert quiet.returncode == 0 and "sets nothing" not in quiet.stderr, quiet.stderr
    # A wrong value in a variable is said as what it must be.
    bad = config_cli(tmp_path, f"--config={cfg}", DGX_MUSIC_MAX_BATCH="many")
    assert bad.returncode == 2
    assert (
        "environment variable DGX_MUSIC_MAX_BATCH: max_batch: must be a whole number, not 'many'"
        in bad.stderr
    )
