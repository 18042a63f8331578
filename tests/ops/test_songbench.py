"""`bench --compare --family ace-step`: diffusers' own pipeline call against the daemon's render."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from daemon.cli import main


def test_compare_times_both_and_finds_the_same_audio(tiny_acestep_dir: Path) -> None:
    from diffusers import AceStepPipeline

    from daemon.ops.songbench import compare

    pipe = AceStepPipeline.from_pretrained(tiny_acestep_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    rows = compare(pipe, [0.5], batch=2, model_name="tiny", steps=2, repeats=1)
    assert [r["engine"] for r in rows] == ["diffusers", "dgx-music"]
    assert all(r["identical"] for r in rows)
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] > 0
    assert all(r["gen_s"] > 0 and r["steps"] == 2 and r["batch"] == 2 for r in rows)


def test_cli_prints_the_ratio_as_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", "bench", "--compare", "--family", "ace-step", "--tiny"]
        + ["--durations", "0.5", "--steps", "2", "--device", "cpu", "--dtype", "float32", "--json"],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    assert {r["engine"] for r in rows} == {"diffusers", "dgx-music"}
    assert rows[1]["ratio"] is not None and rows[1]["identical"] is True


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--family", "ace-step", "--tiny"], "benchmarks with --compare"),
        (["--family", "ace-step", "--compare", "--shape", "small"], "not an ace-step shape"),
        (["--compare", "--shape", "turbo"], "not a musicgen shape"),
    ],
)
def test_cli_refuses_mixed_families(args: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *args]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.slow  # inductor compiles the tiny DiT for the CPU
def test_the_compiled_dit_is_timed_beside_the_eager_render(tiny_acestep_dir: Path) -> None:
    from diffusers import AceStepPipeline

    from daemon.ops.songbench import COMPILED, compare

    pipe = AceStepPipeline.from_pretrained(tiny_acestep_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    rows = compare(pipe, [0.5, 0.7], model_name="tiny", steps=2, repeats=1, compiled=True)
    assert [r["engine"] for r in rows] == ["diffusers", "dgx-music", COMPILED] * 2
    for row in rows[2::3]:
        assert row["within_tolerance"] and row["max_abs_diff"] < 1e-4, row
        assert row["vs_eager"] > 0 and row["first_call_s"] > 0 and row["ratio"] > 0
    assert all(r["identical"] for r in rows if r["engine"] != COMPILED)
    skipped = compare(pipe, [0.5], model_name="tiny", steps=2, repeats=1, compile_skipped="compile is off")
    assert [r.get("compile_skipped") for r in skipped] == [None, "compile is off"]
