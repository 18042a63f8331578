"""benchmarks/gpu_check.py in its CPU quick mode, run as a person runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _gpu_check(cwd: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`benchmarks/gpu_check.py ARGS` as a person runs it, with this checkout's code."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=cwd,
    )


@pytest.mark.slow  # every section starts its own `dgx-music` processes: about a minute on a quiet CPU
@pytest.mark.timeout(900)  # gpu_tests collects the whole suite to find every gpu-marked test
def test_quick_mode_writes_both_files_with_every_section(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _gpu_check(tmp_path, "--out", str(out), "--device", "cpu", "--quick")
    results = json.loads((out / "results.json").read_text())
    summary = (out / "summary.md").read_text()
    sections = results["sections"]
    # In order of value: the headline figures first, the long test run last.
    assert list(sections) == [
        "doctor",
        "bandwidth",
        "compare",
        "profile",
        "shapes",
        "daemon",
        "acestep",
        "gpu_tests",
    ]
    failed = {name: sec.get("error") for name, sec in sections.items() if not sec.get("ok")}
    assert proc.returncode == 0, (failed, proc.stderr[-3000:])
    assert results["ok"] is True and results["device"] == "cpu" and results["quick"] is True
    assert isinstance(sections["doctor"]["checks"], list) and sections["doctor"]["checks"]
    assert sections["bandwidth"]["gb_per_s"] > 0 and len(sections["bandwidth"]["copy_s_runs"]) >= 3
    for batch in ("batch1", "batch2"):
        run = sections["compare"][batch]
        assert run["dgx_gen_s"] > 0 and run["transformers_gen_s"] > 0 and run["speedup"] > 0
        assert run["repeats"] >= 3 and 0 < run["bandwidth_share"]  # medians, as a share of the copy
        (ours,) = [r for r in run["rows"] if r["engine"] == "dgx-music"]
        assert len(ours["gen_s_runs"]) == 3 and run["dgx_gen_s"] == sorted(ours["gen_s_runs"])[1]
    assert sections["shapes"]["tiny"]["dgx_gen_s"] > 0
    profile = sections["profile"]
    for key in ("ms_per_step", "kernels_per_step", "t5_s", "delay_pattern_s", "encodec_s", "capture_s"):
        assert profile[key] >= 0, key
    assert profile["kernels_per_step"] > 10 and profile["peak_memory_bytes"] > 0
    assert profile["repeats"] >= 3 and profile["bandwidth_share"] > 0
    assert profile["ms_per_step_invariant"] > 0 and profile["ms_per_step_invariant_off"] > 0
    assert profile["batch_invariant"] is False  # auto on the CPU: the eager loop
    # auto on the CPU: plain ops; the fused Triton kernels (interpreted here) are timed beside them
    assert profile["kernels"] == "aten" and profile["kernels_other"] == "triton"
    assert profile.get("ms_per_step_other", 0) > 0 or "other_error" in profile
    daemon = sections["daemon"]
    assert daemon["status"] == "completed" and daemon["model"]["decoder"] in ("dgx", "transformers")
    song = sections["acestep"]
    assert song["1s_batch1"]["identical"] and song["1s_batch2"]["ratio"] > 0
    assert song["1s_batch1"]["repeats"] >= 3
    # compile: auto runs the DiT eager on the CPU, and the section says so instead of a figure.
    assert "on CUDA only" in song["1s_batch1"]["compiled_skipped"]
    assert "| daemon | yes |" in summary and "| acestep | yes |" in summary and "Overall: PASS" in summary


def test_a_failing_section_is_recorded_and_sets_the_exit_code(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # No such device: the section fails with its error, the files are still written.
    proc = _gpu_check(
        tmp_path, "--out", str(out), "--device", "cuda:99", "--quick", "--only", "compare", timeout=300
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["ok"] is False
    assert list(results["sections"]) == ["compare"]
    assert (
        results["sections"]["compare"]["ok"] is False and "cuda:99" in results["sections"]["compare"]["error"]
    )
    assert "## Errors" in (out / "summary.md").read_text()
