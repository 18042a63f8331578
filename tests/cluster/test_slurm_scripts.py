"""The test cluster itself, and contrib/slurm's batch scripts run by that real Slurm."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cluster.slurm import SlurmCluster
from tests.daemon_harness import REPO

# One test cluster at a time on this machine (pytest-xdist runs this group on one worker): each
# starts munged, slurmctld and slurmd for the host's own node name on ports it found free.
pytestmark = pytest.mark.xdist_group("slurm")

SBATCH = REPO / "contrib" / "slurm" / "dgx-music.sbatch"
ARRAY = REPO / "contrib" / "slurm" / "dgx-music-array.sbatch"


def _body(path: Path) -> str:
    text = path.read_text()
    return text[text.index("\nset -uo pipefail\n") :]


def test_array_script_runs_the_same_body() -> None:
    assert _body(ARRAY) == _body(SBATCH)
    assert "#SBATCH --array=" in ARRAY.read_text()
    for script in (SBATCH, ARRAY):
        directives = script.read_text()
        for needed in ("--signal=B:TERM@", "--requeue", "--gres=gpu:", "--open-mode=append"):
            assert f"#SBATCH {needed}" in directives, (script.name, needed)


def test_trivial_batch_job_runs_with_a_gpu(slurm: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "hello.out"
    job = slurm.sbatch(["--gres=gpu:1", f"--output={out}", "--wrap", "echo hello CVD=$CUDA_VISIBLE_DEVICES"])
    assert slurm.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"}, 60) == "COMPLETED", slurm.logs_tail()
    assert re.fullmatch(r"hello CVD=[01]\n", out.read_text())


def test_one_daemon_per_allocated_gpu(slurm: SlurmCluster, tmp_path: Path) -> None:
    # `env` in place of the daemon prints what each daemon would be started with, then exits 0.
    out = tmp_path / "env.out"
    job = slurm.sbatch(
        ["--gres=gpu:2", "--cpus-per-task=2", f"--output={out}", str(SBATCH)],
        env={"DGX_MUSIC_SERVE": "env", "HF_HOME": str(tmp_path / "shared-hf")},
    )
    assert slurm.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"}, 60) == "COMPLETED", out.read_text()
    text = out.read_text()
    per_gpu = {i: dict(re.findall(rf"^\[{job} \S+ gpu{i}\] ([A-Z_]+)=(.*)$", text, re.M)) for i in (0, 1)}
    assert sorted(per_gpu[i]["CUDA_VISIBLE_DEVICES"] for i in (0, 1)) == ["0", "1"]
    for env in per_gpu.values():
        assert env["DGX_MUSIC_DEVICE"] == "cuda:0"
        assert env["DGX_MUSIC_WATCH"] == "poll"
        assert env["OMP_NUM_THREADS"] == "1"
        # The shared cache the model was fetched into, offline: no job downloads.
        assert env["HF_HOME"] == str(tmp_path / "shared-hf")
        assert env["HF_HUB_OFFLINE"] == "1"
    assert "all daemons stopped (exit 0)" in text
    assert f"model cache: {tmp_path / 'shared-hf'} (HF_HUB_OFFLINE=1)" in text
