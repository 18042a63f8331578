"""Full disk: the spool on a small tmpfs that fills up under the running daemon.

Phase 1, no space at all: jobs renamed into the inbox cannot even be claimed (the claim record
is a write); they stay in the inbox and the daemon stays up. Phase 2, a little space (claims
fit, audio does not): jobs are claimed and generated, the result writes fail with ENOSPC, the
jobs stay in work/ and no partial result shows in outbox/. Phase 3, space freed: every job
completes exactly once with whole audio. Skipped, with the reason, where tmpfs cannot be mounted.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf
from reliability.daemonproc import (
    DaemonProc,
    assert_exactly_once,
    job_yaml,
    outcomes,
    record_figures,
    spool_quiet,
    wait_until,
    write_config,
)

from jobspec.names import PAGE_NAME

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TMPFS_SIZE = "16m"
JOB_S = 2.0  # 128 KB of 16-bit mono 32 kHz audio: more than phase 2 leaves free


@pytest.fixture
def small_fs() -> Iterator[Path]:
    mnt = Path(tempfile.mkdtemp(prefix="dgxfull-", dir="/tmp"))
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        mnt.rmdir()
        pytest.skip(
            f"cannot mount a tmpfs for the full-disk test ({res.stderr.strip() or res.returncode}); "
            "needs root or CAP_SYS_ADMIN"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(filler: Path, leave: int) -> None:
    """Grow `filler` until only about `leave` bytes are free (0: until ENOSPC)."""
    block = b"\0" * 65536
    with open(filler, "ab") as fh:
        while True:
            room = _free(filler.parent) - leave
            if room <= 0:
                break
            try:
                fh.write(block[: max(4096, min(len(block), room))])
                fh.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    try:
        os.sync()
    except OSError:
        pass


def test_full_disk_keeps_jobs_queued_and_completes_them_when_space_returns(
    small_fs: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    spool = small_fs / "spool"
    cfg = write_config(tmp_path / "config.yaml", spool, tiny_model_dir, rescan_interval_s=1.0)
    daemon = DaemonProc(cfg, tmp_path / "daemon.log")
    daemon.start().wait_ready()
    inbox = spool / "inbox"
    filler = small_fs / "filler"
    ids = [f"full{i}" for i in range(4)]
    originals = {
        j: job_yaml(f"full disk tune {j[4:]}", duration=JOB_S, seed=n).encode() for n, j in enumerate(ids)
    }
    t0 = time.monotonic()
    try:
        # Phase 1: staged while there is room, filled to the last block, then renamed in.
        for job_id in ids:
            (inbox / f".{job_id}.part").write_bytes(originals[job_id])
        _fill(filler, 0)
        for job_id in ids[:2]:
            os.rename(inbox / f".{job_id}.part", inbox / f"{job_id}.yaml")
        time.sleep(3.0)  # a few rescans
        assert daemon.alive(), daemon.log_text()[-3000:]
        assert sorted(p.name for p in inbox.iterdir() if not p.name.startswith(".")) == [
            "full0.yaml",
            "full1.yaml",
        ]
        assert all((inbox / f"{j}.yaml").read_bytes() == originals[j] for j in ids[:2])
        assert outcomes(spool).count() == 0

        # Phase 2: room for claims and state, not for audio.
        # One truncate: the free space goes from nothing to 96 KB at once.
        os.truncate(filler, filler.stat().st_size - 96 * 1024)
        for job_id in ids[2:]:
            os.rename(inbox / f".{job_id}.part", inbox / f"{job_id}.yaml")
        try:
            wait_until(
                lambda: (
                    set(re.findall(r"job (full\d): cannot write its results", daemon.log_text())) == set(ids)
                ),
                60,
                what="every job to hit ENOSPC on its results",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{daemon.log_text()[-4000:]}") from None
        assert daemon.alive()
        work = sorted(p.read_bytes() for p in (spool / "work").iterdir() if not p.name.startswith("."))
        assert work == sorted(originals.values()), "jobs left work/ while the disk was full"
        visible = [
            p.name for p in (spool / "outbox").iterdir() if not p.name.startswith(".") and p.name != PAGE_NAME
        ]
        assert not visible, f"partial results visible in outbox/: {visible}"
        assert not list((spool / "failed").iterdir()), "a full disk must not fail jobs"

        # Phase 3: space back; the retries (5 s, then 15 s...) publish everything.
        filler.unlink()
        t_free = time.monotonic()
        wait_until(
            lambda: outcomes(spool).count() >= len(ids) and spool_quiet(spool),
            120,
            what="completion after freeing space",
        )
        recovered_s = time.monotonic() - t_free
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
    got = assert_exactly_once(spool, ids)
    assert not got.failed
    for job_id, body in got.completed.items():
        assert body["request"]["prompt"] == f"full disk tune {job_id[4:]}"
        data, sr = sf.read(spool / "outbox" / body["outputs"][0]["path"])
        assert sr == body["outputs"][0]["sample_rate"] and len(data) == body["outputs"][0]["frames"]
    log = daemon.log_text()
    assert "No space left on device" in log
    record_figures(
        "full_disk",
        {
            "jobs": len(ids),
            "lost": len(ids) - got.count(),
            "completed_after_space_freed_s": round(recovered_s, 1),
            "wall_s": round(time.monotonic() - t0, 1),
        },
    )
