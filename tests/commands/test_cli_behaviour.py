"""What every command does alike: the config lookup, a missing spool, a closed pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from daemon_harness import clean_env


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(**env),
        timeout=120,
    )


def test_status_on_a_missing_spool_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"spool: {tmp_path / 'nowhere'}\n")
    res = cli(tmp_path, "status", "--config", str(cfg))
    assert res.returncode == 2
    assert f"spool {tmp_path / 'nowhere'} does not exist" in res.stderr
    assert res.stdout == ""


def test_validate_takes_its_limits_from_the_config_in_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("max_duration: 10\nmodels: {tiny: {path: /m}}\ndefault_model: tiny\n")
    long, other = tmp_path / "long.yaml", tmp_path / "other.yaml"
    long.write_text("prompt: a calm piano tune\nduration: 20\n")
    other.write_text("prompt: a calm piano tune\nduration: 5\nmodel: small\n")
    res = cli(tmp_path, "validate", "--json", str(long), str(other), DGX_MUSIC_CONFIG=str(cfg))
    assert res.returncode == 2, res.stderr
    msgs = " | ".join(e["msg"] for f in json.loads(res.stdout)["files"] for e in f["errors"])
    assert "10" in msgs and "unknown model 'small'" in msgs, msgs
    assert "no config file" not in res.stderr


def test_validate_without_a_config_says_so(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("prompt: a calm piano tune\nduration: 20\nmodel: anything\n")
    res = cli(tmp_path, "validate", str(job))
    if Path("/etc/dgx-music/config.yaml").is_file():
        return  # this machine has a system config: validate rightly reads it
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == f"{job}: ok (1 job)\n"
    assert "no config file" in res.stderr and "model names are not checked" in res.stderr


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    # The reader is gone before the first write (as with `| head -1` on a long output).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "daemon", "schema"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=clean_env(),
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.stderr == ""
    assert proc.returncode == 141


def test_head_of_a_pipe_through_a_shell(tmp_path: Path) -> None:
    res = subprocess.run(
        f"{sys.executable} -m daemon schema | head -1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=120,
    )
    assert res.stdout == "{\n" and res.stderr == ""


def test_every_command_describes_itself_and_its_arguments(tmp_path: Path) -> None:
    from daemon.cli import COMMAND_MODULES

    for name in COMMAND_MODULES:
        res = cli(tmp_path, name, "--help")
        assert res.returncode == 0, res.stderr
        paragraphs = res.stdout.split("\n\n")
        # usage, then a description of a sentence or more, then the arguments
        assert len(paragraphs) >= 3 and not paragraphs[1].lstrip().startswith(("options:", "positional")), (
            f"`{name} --help` has no description:\n{res.stdout}"
        )
        assert len(paragraphs[1].split()) >= 12, paragraphs[1]
        if "positional arguments:" in res.stdout:
            block = res.stdout.split("positional arguments:\n", 1)[1].split("\n\n", 1)[0]
            # every FILE, ID, DIR ... says what it is: argparse puts an unexplained metavar alone on
            # its line, with nothing indented under it (a long one has its help on the next line)
            lines = block.splitlines()
            indent = [len(ln) - len(ln.lstrip()) for ln in lines] + [0]
            bare = [
                ln.strip()
                for i, ln in enumerate(lines)
                if len(ln.split()) == 1 and indent[i + 1] <= indent[i]
            ]
            assert not bare, f"`{name} --help`: {bare} not explained:\n{block}"


def test_submit_checks_library_references_where_it_can_read_the_spool(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    spool = tmp_path / "spool"
    for d in ("inbox", "outbox", "failed", "state", "library"):
        (spool / d).mkdir(parents=True)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"spool: {spool}\n")
    gone = tmp_path / "gone.yaml"
    gone.write_text("prompt: carry on from the riff\nduration: 4\ncontinue_from: library/riff.wav\n")
    res = cli(tmp_path, "submit", str(gone), "--config", str(cfg))
    assert res.returncode == 2, res.stderr
    assert f"{gone}:3: continue_from: 'library/riff.wav' does not exist in library/" in res.stderr
    assert "copy the file into the spool's library/ first" in res.stderr
    assert "nothing submitted" in res.stderr and list((spool / "inbox").iterdir()) == []

    # Not audio: refused the way the daemon would refuse it.
    (spool / "library" / "riff.wav").write_text("not a sound")
    res = cli(tmp_path, "submit", str(gone), "--config", str(cfg))
    assert res.returncode == 2 and "continue_from: 'library/riff.wav'" in res.stderr, res.stderr

    # Once the file is there, the job goes in.
    sf.write(spool / "library" / "riff.wav", np.zeros((32000, 1), dtype=np.float32), 32000)
    res = cli(tmp_path, "submit", str(gone), "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert (spool / "inbox" / "gone.yaml").is_file()
