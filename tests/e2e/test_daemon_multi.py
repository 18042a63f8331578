"""Two daemons on one spool (one per GPU in production) race for every file; the rename claim
must make double work impossible: 40 jobs, exactly one outcome each, no `-2` ids.
"""

from __future__ import annotations

import re
from pathlib import Path

from daemon_harness import DaemonProcess, SpoolView, job_yaml, wait_until, write_config

N_JOBS = 40


def _completed_ids(log: str) -> list[str]:
    return re.findall(r"job (\S+) completed:", log)


def test_two_daemons_one_spool_no_duplicates(tmp_path: Path, tiny_model_dir: Path) -> None:
    spool = tmp_path / "spool"
    cfg_a = write_config(tmp_path / "a.yaml", spool, tiny_model_dir)
    cfg_b = write_config(tmp_path / "b.yaml", spool, tiny_model_dir)
    sp = SpoolView(spool)
    with DaemonProcess(cfg_a, tmp_path / "a.log") as a, DaemonProcess(cfg_b, tmp_path / "b.log") as b:
        a.start(wait_ready=False)
        b.start(wait_ready=False)
        a.wait_ready()
        b.wait_ready()

        names = [f"race-{i:02d}.yaml" for i in range(N_JOBS)]
        for i, name in enumerate(names):
            sp.drop(name, job_yaml(f"a job both daemons want, number {i}", duration=0.5, seed=i))

        def all_done() -> dict | None:
            for d in (a, b):
                if not d.alive():
                    raise AssertionError(f"a daemon exited\n{d.log_tail()}")
            got = sp.by_source()
            return got if set(names) <= set(got) else None

        got = wait_until(all_done, 300, interval=0.2, what=f"{N_JOBS} outcomes")
        for name in names:
            assert len(got[name]) == 1, (name, got[name])
            body = got[name][0]
            assert body["status"] == "completed", body
            assert body["job_id"] == name[:-5]  # never `-2`: nobody else held the id
        assert len(sp.sidecars()) == N_JOBS
        assert len([n for n in sp.job_files(sp.outbox) if n.endswith(".wav")]) == N_JOBS
        wait_until(lambda: not sp.job_files(sp.work), 10, what="work/ to empty")

        # The sidecars do not say which daemon ran a job; the logs do: together, each job once.
        done_a, done_b = _completed_ids(a.log()), _completed_ids(b.log())
        print(f"daemon a ran {len(done_a)} job(s), daemon b {len(done_b)}")
        assert sorted(done_a + done_b) == sorted(n[:-5] for n in names)
        assert not set(done_a) & set(done_b)
        assert done_a and done_b, (
            f"one daemon did everything ({len(done_a)} / {len(done_b)}): no race was tested"
        )

        assert a.stop() == 0
        assert b.stop() == 0
