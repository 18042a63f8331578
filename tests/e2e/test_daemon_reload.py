"""A configuration reload (SIGHUP, what `systemctl reload` sends) reaches the decode setup.

The real daemon serves the tiny model; each step rewrites its config file, sends SIGHUP, waits for
the reload to be logged, runs one job and reads the change in that job's sidecar: the decoder,
batch_invariant and max_batch (the fixed row count), the kernels, dtype and device (the model is
loaded again: `model_load_s` of the next job), and a model whose source moved (another checkpoint
under the same name); for an ACE-Step model, whether its DiT runs compiled. `status` and `doctor`
show the setup the serving daemon resolved.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_harness import DaemonProcess, SpoolView, job_yaml, run_cli, wait_until, write_config


class Served:
    def __init__(self, daemon: DaemonProcess, spool: SpoolView, config: Path) -> None:
        self.daemon, self.spool, self.config = daemon, spool, config
        self.jobs = 0

    def reload(self, **changes: Any) -> None:
        values = yaml.safe_load(self.config.read_text())
        values.update(changes)
        self.config.write_text(yaml.safe_dump(values, sort_keys=False))
        done = self.daemon.log().count("configuration reloaded")
        self.daemon.signal(signal.SIGHUP)
        wait_until(
            lambda: self.daemon.log().count("configuration reloaded") > done,
            60,
            what="the reload",
            alive=self.daemon,
        )

    def job(self, **fields: Any) -> dict[str, Any]:
        self.jobs += 1
        job_id = f"after-reload-{self.jobs}"
        values = {"duration": 0.2, "seed": 7, **fields}
        self.spool.drop(f"{job_id}.yaml", job_yaml(f"a tune after reload {self.jobs}", **values))
        sidecar = self.spool.wait_outcome(job_id, 120, alive=self.daemon)
        assert sidecar.get("status", "completed") != "failed" and "outputs" in sidecar, sidecar
        return sidecar


@pytest.fixture
def served(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Served]:
    config = write_config(
        tmp_path / "config.yaml",
        tmp_path / "spool",
        tiny_model_dir,
        decoder="dgx",
        kernels="aten",
        batch_invariant="off",
        max_batch=2,
        dtype="float32",
        rescan_interval_s=600,
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        daemon.start()
        yield Served(daemon, SpoolView(tmp_path / "spool"), config)
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.close()


def test_each_reloaded_decode_setting_reaches_the_next_job(
    served: Served, tiny_stereo_model_dir: Path
) -> None:
    first = served.job()
    setup = first["model"]["setup"]
    assert first["model"]["decoder"] == "dgx" and setup["kernels"] == "aten"
    assert setup["batch_invariant"] is False and setup["rows"] is None
    assert first["model"]["dtype"] == "float32" and first["model"]["device"] == "cpu"
    unchanged = served.job()
    assert unchanged["timings"]["model_load_s"] == 0.0  # nothing changed: the model stays
    # status and doctor report the same setup, read from the serving daemon.
    status = run_cli(served.config, "status")
    assert "decoder dgx (capture off, aten kernels)" in status.stdout, status.stdout + status.stderr
    doctor = run_cli(served.config, "doctor")
    assert "decode setup" in doctor.stdout and "tiny dgx (capture off, aten kernels)" in doctor.stdout, (
        doctor.stdout
    )

    served.reload(decoder="transformers")
    res = served.job()
    assert res["model"]["decoder"] == res["decoder"] == "transformers"
    assert res["timings"]["model_load_s"] > 0 and res["model"]["setup"]["kernels"] is None

    served.reload(decoder="dgx", batch_invariant="on")
    res = served.job()
    # A job decodes at its own size (one row per call) under fixed shapes, whatever max_batch is.
    assert res["model"]["setup"]["batch_invariant"] is True and res["model"]["setup"]["rows"] == 1
    assert res["reproducibility"]["by_construction"] is True

    served.reload(max_batch=4)
    res = served.job()
    assert res["model"]["setup"]["rows"] == 1 and res["timings"]["model_load_s"] > 0

    served.reload(kernels="auto", batch_invariant="off")
    res = served.job()
    # auto on a CPU picks the ATen ops; the point is that the new setting was resolved again.
    assert res["model"]["setup"]["kernels"] == "aten" and res["model"]["setup"]["batch_invariant"] is False
    assert res["timings"]["model_load_s"] > 0

    served.reload(dtype="bfloat16")
    res = served.job()
    assert res["model"]["dtype"] == "bfloat16" and res["timings"]["model_load_s"] > 0

    served.reload(device="auto")  # a CPU box: auto is the CPU again, but the model is placed anew
    res = served.job()
    assert res["model"]["device"] == "cpu" and res["timings"]["model_load_s"] > 0

    before = res["model"]["revision"]
    served.reload(models={"tiny": {"path": str(tiny_stereo_model_dir)}})
    res = served.job()
    assert res["model"]["source"] == str(tiny_stereo_model_dir) and res["model"]["revision"] != before
    assert res["outputs"][0]["channels"] == 2


@pytest.mark.slow  # the reloaded setting compiles the DiT (inductor builds C++ for the CPU)
def test_a_reload_compiles_the_ace_step_dit_or_not(tmp_path: Path, tiny_acestep_dir: Path) -> None:
    config = write_config(
        tmp_path / "config.yaml",
        tmp_path / "spool",
        tiny_acestep_dir,
        compile="off",
        warmup=True,
        dtype="float32",
        rescan_interval_s=600,
    )
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        served = Served(daemon, SpoolView(tmp_path / "spool"), config)
        first = served.job(duration=1.0, steps=2)
        assert first["model"]["family"] == "ace-step" and first["model"]["setup"]["compile"] == "off"

        served.reload(compile="on")
        res = served.job(duration=1.0, steps=2)
        # The model is loaded again and its warm-up compiles the DiT, before the job.
        assert res["model"]["setup"]["compile"] == "on", res["model"]["setup"]
        assert res["timings"]["model_load_s"] > 0
        status = run_cli(served.config, "status")
        assert "decoder diffusers (compile on" in status.stdout, status.stdout + status.stderr

        served.reload(compile="auto")  # auto on a CPU: eager again
        res = served.job(duration=1.0, steps=2)
        assert res["model"]["setup"]["compile"] == "off" and res["timings"]["model_load_s"] > 0
        assert daemon.stop() == 0, daemon.log_tail()
