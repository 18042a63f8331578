"""Two daemons as real Slurm jobs on one spool: 60 jobs, one daemon scancelled mid-job.

The daemons run contrib/slurm/dgx-music.sbatch under the test cluster (tests/cluster/slurm.py)
with this checkout's code and the tiny model on CPU. Daemon A decodes slowly (an injected
pause in every decode) so that the scancel lands mid-job; its running job must be handed back
to work/ and finished by daemon B, and every job must end exactly once.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.slurm import SlurmCluster
from tests.daemon_harness import READY_LINE, REPO, SpoolView, clean_env, job_yaml, wait_until, write_config
from tests.reliability.daemonproc import assert_exactly_once, record_figures, spool_quiet

# One test cluster at a time on this machine (pytest-xdist runs this group on one worker): each
# starts munged, slurmctld and slurmd for the host's own node name on ports it found free.
pytestmark = pytest.mark.xdist_group("slurm")

SBATCH = REPO / "contrib" / "slurm" / "dgx-music.sbatch"
JOBS = 60
DONE = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def _submit(slurm: SlurmCluster, out: Path, config: Path, **env: str) -> str:
    job_env = clean_env(
        DGX_MUSIC_CONFIG=str(config),
        DGX_MUSIC_SERVE=f"{sys.executable} -m daemon serve",
        DGX_MUSIC_DEVICE="cpu",  # the GPUs of the test cluster are stand-ins
        **env,
    )
    return slurm.sbatch(["--gres=gpu:1", "--cpus-per-task=1", f"--output={out}", str(SBATCH)], env=job_env)


def _daemon_pid(out: Path) -> int:
    m = re.search(r"started daemon 0 \(pid (\d+)", out.read_text())
    assert m, out.read_text()
    return int(m.group(1))


def _completed_ids(out: Path) -> list[str]:
    return re.findall(r"\bjob (\S+) completed:", out.read_text())


def _stalled_after_a_result(out: Path) -> bool:
    log = out.read_text()
    first = re.search(r"\bjob \S+ completed:", log)
    return bool(first) and "fault injection: stalling" in log[first.end() :]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_scancel_drains_one_daemon_and_the_other_finishes_its_job(
    slurm: SlurmCluster, tmp_path: Path, tiny_model_dir: Path
) -> None:
    spool = tmp_path / "spool"
    config = write_config(
        tmp_path / "config.yaml",
        spool,
        tiny_model_dir,
        watch="poll",
        poll_interval_s=0.2,
        rescan_interval_s=2,
        stop_grace_s=1,
    )
    view = SpoolView(spool)
    out_a, out_b = tmp_path / "a.out", tmp_path / "b.out"
    # A pauses 3 s in every decode: far longer than its 1 s stop grace, so its job is handed back.
    job_a = _submit(
        slurm, out_a, config, DGXMUSIC_TEST_FAULTS=json.dumps({"stall_after_steps": 2, "stall_s": 3})
    )
    job_b = _submit(slurm, out_b, config)
    for job, out in ((job_a, out_a), (job_b, out_b)):
        wait_until(
            lambda out=out: out.exists() and READY_LINE in out.read_text(),
            180,
            interval=0.2,
            what=f"daemon job {job} to be ready",
        )
        assert slurm.job_state(job) == "RUNNING"
    pid_a = _daemon_pid(out_a)

    t_drop = time.monotonic()
    ids = [f"j{i:02d}" for i in range(JOBS)]
    for i, job_id in enumerate(ids):
        view.drop(f"{job_id}.yaml", job_yaml(f"cluster test tune number {i}", duration=0.5, seed=i))

    # Cancel once A, after publishing its first results, is paused 3 s inside its next decode: the
    # scancel then lands mid-job. A batch publishes its jobs one by one, so the first result alone
    # does not mean the next decode has begun.
    wait_until(lambda: _stalled_after_a_result(out_a), 120, interval=0.02, what="daemon A's second decode")
    t_cancel = time.monotonic()
    slurm.run(["scancel", job_a])
    assert slurm.wait_state(job_a, DONE, 60) == "CANCELLED"
    drain_s = time.monotonic() - t_cancel
    assert not Path(f"/proc/{pid_a}").exists(), "daemon A outlived its Slurm job"

    wait_until(
        lambda: len(view.sidecars()) >= JOBS and spool_quiet(spool),
        240,
        interval=0.2,
        what=f"all {JOBS} outcomes",
    )
    wall_s = time.monotonic() - t_drop
    assert slurm.job_state(job_b) == "RUNNING", out_b.read_text()[-3000:]

    got = assert_exactly_once(spool, ids)
    assert not got.failed, {k: v["error"] for k, v in got.failed.items()}
    log_a = out_a.read_text()
    handed_back = re.findall(r"\bjob (\S+) interrupted by shutdown", log_a)
    assert handed_back, log_a[-3000:]
    done_a, done_b = _completed_ids(out_a), _completed_ids(out_b)
    assert set(handed_back) <= set(done_b) - set(done_a)
    assert sorted(done_a + done_b) == ids  # each job completed by exactly one daemon
    assert re.search(rf"^\[{job_a} \S+ gpu0\] .*stopped$", log_a, re.M), log_a[-2000:]
    record_figures(
        "slurm_scancel",
        {
            "jobs": JOBS,
            "clip_s": 0.5,
            "drain_s": round(drain_s, 2),
            "wall_s": round(wall_s, 1),
            "jobs_daemon_a": len(done_a),
            "jobs_daemon_b": len(done_b),
            "handed_back": len(handed_back),
        },
    )
