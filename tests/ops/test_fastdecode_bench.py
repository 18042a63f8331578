"""The decoder comparison: `daemon.ops.decodebench.compare` and the benchmarks/compare_decoders.py script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.ops.decodebench import compare, format_table

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = {"engine", "model", "batch", "duration_s", "gen_s", "rtf", "peak_memory_bytes"}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    return model, AutoProcessor.from_pretrained(tiny_model_dir)


def test_compare_gives_one_row_per_engine_and_duration(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    rows = compare(model, processor, [0.25, 0.5], 2, model_name="tiny", warmup=False)
    assert [(r["engine"], r["duration_s"]) for r in rows] == [
        ("transformers", 0.25),
        ("dgx-music", 0.25),
        ("transformers", 0.5),
        ("dgx-music", 0.5),
    ]
    for row in rows:
        assert CONTRACT <= set(row)
        assert row["model"] == "tiny" and row["batch"] == 2
        assert row["gen_s"] > 0 and row["peak_memory_bytes"] > 0
        assert row["rtf"] == pytest.approx(row["gen_s"] / row["duration_s"], rel=1e-2)
        assert row["frames"] == round(row["duration_s"] * 40)  # the tiny codec runs at 40 frames/s
        assert row["steps"] == row["frames"] + 3
        assert row["audio_s_per_s"] == pytest.approx(2 * row["duration_s"] / row["gen_s"], rel=1e-2)
    assert all(r["ratio"] == 1.0 for r in rows if r["engine"] == "transformers")
    assert all(r["ratio"] > 0 for r in rows if r["engine"] == "dgx-music")
    table = format_table(rows)
    assert "dgx-music" in table and "transformers" in table


def test_script_prints_json_rows() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "compare_decoders.py"),
            "--shape",
            "tiny",
            "--durations",
            "0.25",
            "--batch",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["engine"] for r in rows} == {"transformers", "dgx-music"}
    assert all(CONTRACT <= set(r) for r in rows)


def test_script_rejects_bad_durations() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_decoders.py"), "--durations", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "--durations" in proc.stderr
