"""`dgx-music doctor` against real configs, spools and model directories; device resolution."""

from __future__ import annotations

import argparse
import http.server
import io
import json
import logging
import mmap
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from daemon.commands import doctor as doctor_command
from daemon.engine.devices import (
    DeviceError,
    arch_supported,
    gpu_info,
    peak_memory_bytes,
    reset_peak_memory,
    resolve_device,
    resolve_dtype,
)
from daemon.ops import doctor as doc
from daemon.spool.layout import SPOOL_DIRS
from tests.unprivileged import run_unprivileged

CUDA = torch.cuda.is_available()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DGX_MUSIC_* or HF_* from the outside world; an empty HF cache of our own."""
    for key in list(os.environ):
        if key.startswith("DGX_MUSIC_") or key in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HOME"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)  # no stray .env


def tiny_safetensors(path: Path) -> None:
    """A well-formed safetensors file holding one float32 tensor of 4 values."""
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(4)}, str(path))


def fake_checkpoint(directory: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A directory with the files a save_pretrained MusicGen checkpoint has (the weights are a
    valid safetensors file, since doctor reads its header; the rest is not loaded by doctor)."""
    directory.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        if name in skip:
            continue
        if name.endswith(".safetensors"):
            tiny_safetensors(directory / name)
        else:
            (directory / name).write_text('{"model_type": "musicgen"}' if name == "config.json" else "{}")
    return directory


def test_a_truncated_weights_file_fails(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    tiny_safetensors(weights)
    assert doc.safetensors_problem(weights) is None
    weights.write_bytes(weights.read_bytes()[:-3])
    assert "truncated" in (doc.safetensors_problem(weights) or "")
    weights.write_bytes(b"\x10\x00")
    assert "truncated" in (doc.safetensors_problem(weights) or "")


def make_spool(root: Path) -> Path:
    for sub in SPOOL_DIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def write_config(tmp_path: Path, **values: Any) -> Path:
    data: dict[str, Any] = {
        "spool": str(make_spool(tmp_path / "spool")),
        "models": {"tiny": {"path": str(tmp_path / "models" / "tiny")}},
        "default_model": "tiny",
        "device": "cpu",
    }
    data.update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_doctor(config: Path, *, as_json: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    code = doc.doctor(config, as_json=as_json, out=out)
    return code, out.getvalue()


def checks_by_name(config: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    code, text = run_doctor(config, as_json=True)
    return code, {c["name"]: c for c in json.loads(text)}


# ---------------------------------------------------------------- whole runs


def test_a_good_install_passes(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "models" / "tiny")
    code, checks = checks_by_name(write_config(tmp_path))
    assert code == 0, [c for c in checks.values() if c["status"] == "fail"]
    assert checks["config"]["status"] == "ok"
    assert checks["spool"]["status"] == "ok"
    assert checks["model tiny"]["status"] == "ok"
    assert checks["tensor check"]["status"] == "ok"
    assert checks["device"]["detail"].startswith("cpu -> cpu")
    for check in checks.values():
        assert check["status"] in ("ok", "warn", "fail")
        assert (check["fix"] is None) == (check["status"] == "ok"), check


def test_a_real_tiny_checkpoint_passes(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path, models={"tiny": {"path": str(tiny_model_dir)}})
    code, checks = checks_by_name(config)
    assert checks["model tiny"]["status"] == "ok"
    assert code == 0


def test_an_acestep_checkpoint_shows_diffusers_its_components_and_licence(
    tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    import diffusers

    config = write_config(tmp_path, models={"song": {"path": str(tiny_acestep_dir)}}, default_model="song")
    code, checks = checks_by_name(config)
    assert code == 0, [c for c in checks.values() if c["status"] == "fail"]
    assert checks["diffusers"]["status"] == "ok"
    assert f"diffusers {diffusers.__version__}" in checks["diffusers"]["detail"]
    detail = checks["model song"]["detail"]
    assert "licence mit" in detail
    for part in (
        "transformer: AceStepTransformer1DModel",
        "vae: AutoencoderOobleck",
        "text_encoder: Qwen3Model",
    ):
        assert part in detail


def test_an_incomplete_acestep_checkpoint_fails(tmp_path: Path) -> None:
    song = tmp_path / "song"
    song.mkdir()
    (song / "model_index.json").write_text('{"_class_name": "AceStepPipeline", "vae": ["diffusers", "X"]}')
    config = write_config(tmp_path, models={"song": {"path": str(song)}}, default_model="song")
    code, checks = checks_by_name(config)
    assert code != 0
    assert checks["model song"]["status"] == "fail"
    assert "lacks its transformer" in checks["model song"]["detail"]


@pytest.mark.skipif(CUDA, reason="checks the CPU-only report")
def test_without_cuda_the_gpu_checks_warn_but_do_not_fail(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "models" / "tiny")
    code, checks = checks_by_name(write_config(tmp_path, device="auto"))
    assert code == 0
    assert checks["cuda"]["status"] == "warn"
    assert "CPU" in checks["cuda"]["detail"]
    assert "torch" in checks["cuda"]["fix"]
    assert "gpu" not in checks
    assert checks["device"]["status"] == "ok"
    assert "auto -> cpu" in checks["device"]["detail"]


@pytest.mark.skipif(CUDA, reason="checks the CPU-only report")
def test_without_cuda_doctor_names_the_dtype_the_daemon_will_use(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "models" / "tiny")
    config = write_config(tmp_path, device="auto", dtype="bfloat16")
    res = subprocess.run(
        [sys.executable, "-m", "daemon", "doctor", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    checks = {c["name"]: c for c in json.loads(res.stdout)}
    resolved = checks["device"]["detail"].rsplit("-> ", 1)[1].split()[0].strip(",")
    assert resolved in ("float32", "bfloat16"), checks["device"]["detail"]
    # Not "float32" while it would run bfloat16: the same dtype as the device check resolves.
    assert f"falls back to the CPU ({resolved}, slow)" in checks["cuda"]["detail"], checks["cuda"]
    assert resolved == "bfloat16"


def test_missing_model_directory_fails_with_the_fix(tmp_path: Path) -> None:
    code, checks = checks_by_name(write_config(tmp_path))
    assert code == 1
    model = checks["model tiny"]
    assert model["status"] == "fail"
    assert "no such directory" in model["detail"]
    assert "dgx-music model init-tiny" in model["fix"]


@pytest.mark.parametrize(
    ("skip", "named"),
    [
        (("config.json",), "config.json"),
        (("model.safetensors",), "weights"),
        (("tokenizer.json",), "tokenizer"),
    ],
)
def test_incomplete_model_directory_names_what_is_missing(
    tmp_path: Path, skip: tuple[str, ...], named: str
) -> None:
    fake_checkpoint(tmp_path / "models" / "tiny", skip=skip)
    code, checks = checks_by_name(write_config(tmp_path))
    assert code == 1
    assert checks["model tiny"]["status"] == "fail"
    assert named in checks["model tiny"]["detail"]


def _hub_config(tmp_path: Path) -> Path:
    fake_checkpoint(tmp_path / "models" / "tiny")
    return write_config(
        tmp_path,
        models={
            "tiny": {"path": str(tmp_path / "models" / "tiny")},
            "small": {"id": "facebook/musicgen-small"},
        },
    )


def test_hub_model_not_cached_offline_fails_with_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, checks = checks_by_name(_hub_config(tmp_path))
    assert code == 1
    small = checks["model small"]
    assert small["status"] == "fail"
    assert "HF_HUB_OFFLINE" in small["detail"]
    assert "dgx-music model fetch small" in small["fix"]


class _Hub(http.server.BaseHTTPRequestHandler):
    """A hub that answers for every repo and revision (HEAD only: all doctor asks)."""

    def do_HEAD(self) -> None:  # noqa: N802  (http.server's naming)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_hub_model_not_cached_online_warns_only_when_the_hub_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = http.server.HTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.server_address[1]}")
        code, checks = checks_by_name(_hub_config(tmp_path))
    finally:
        hub.shutdown()
        hub.server_close()
    assert code == 0
    assert checks["model small"]["status"] == "warn"
    assert "will be downloaded at load" in checks["model small"]["detail"]
    assert "dgx-music model fetch small" in checks["model small"]["fix"]
    assert "the unit runs offline" in checks["model small"]["fix"]

    # The same model with a hub that does not answer: serve could not load it, so doctor fails.
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.server_address[1]}")
    code, checks = checks_by_name(_hub_config(tmp_path / "again"))
    assert code == 1
    assert "cannot be downloaded now" in checks["model small"]["detail"]


def test_hub_model_in_the_cache_passes_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the hub cache layout huggingface_hub writes: refs/<revision> -> snapshots/<commit>/<files>
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--facebook--musicgen-small"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    fake_checkpoint(repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, checks = checks_by_name(_hub_config(tmp_path))
    assert checks["model small"]["status"] == "ok", checks["model small"]
    assert code == 0


def test_sharded_hub_weights_with_a_missing_shard_are_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "hf" / "hub" / "models--facebook--musicgen-small"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = fake_checkpoint(repo / "snapshots" / commit, skip=("model.safetensors",))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (snap / "model.safetensors.index.json").write_text(json.dumps(index))
    (snap / "model-00001-of-00002.safetensors").write_text("")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, checks = checks_by_name(_hub_config(tmp_path))
    assert code == 1
    assert "model-00002-of-00002.safetensors" in checks["model small"]["detail"]


def test_invalid_config_fails_with_the_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, max_durration=10)
    code, checks = checks_by_name(config)
    assert code == 1
    assert checks["config"]["status"] == "fail"
    assert "max_durration" in checks["config"]["detail"]
    assert "spool" not in checks  # nothing to check without settings
    assert checks["python"]["status"] == "ok"  # the platform checks still ran


def test_missing_config_file_says_how_to_create_it(tmp_path: Path) -> None:
    code, checks = checks_by_name(tmp_path / "nope.yaml")
    assert code == 1
    assert "not found" in checks["config"]["detail"]
    assert "config.example.yaml" in checks["config"]["fix"]


def test_missing_spool_fails_and_missing_subdir_warns(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "models" / "tiny")
    config = write_config(tmp_path, spool=str(tmp_path / "no-spool"))
    code, checks = checks_by_name(config)
    assert code == 1
    assert checks["spool"]["status"] == "fail"
    assert "mkdir -p" in checks["spool"]["fix"]

    config = write_config(tmp_path)
    (tmp_path / "spool" / "failed").rmdir()
    code, checks = checks_by_name(config)
    assert code == 0
    assert checks["spool"]["status"] == "warn"
    assert "failed/" in checks["spool"]["detail"]


def test_unwritable_spool_fails(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "models" / "tiny")
    config = write_config(tmp_path)
    outbox = tmp_path / "spool" / "outbox"
    outbox.chmod(0o555)

    def check() -> None:
        code, checks = checks_by_name(config)
        assert code == 1
        assert "outbox/ not writable" in checks["spool"]["detail"]

    try:
        run_unprivileged(check)  # as root too (CI): in a child that cannot bypass the permission bits
    finally:
        outbox.chmod(0o755)


def test_spool_split_across_filesystems_fails(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than tmp_path")
    fake_checkpoint(tmp_path / "models" / "tiny")
    config = write_config(tmp_path)
    outbox = tmp_path / "spool" / "outbox"
    outbox.rmdir()
    elsewhere = shm / f"dgx-music-doctor-test-{os.getpid()}"
    elsewhere.mkdir()
    try:
        outbox.symlink_to(elsewhere)
        code, checks = checks_by_name(config)
    finally:
        elsewhere.rmdir()
    assert code == 1
    assert "different filesystems" in checks["spool"]["detail"]


@pytest.mark.skipif(CUDA, reason="CUDA is present here")
def test_configured_cuda_without_cuda_fails_with_the_fix(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "models" / "tiny")
    code, checks = checks_by_name(write_config(tmp_path, device="cuda"))
    assert code == 1
    assert checks["device"]["status"] == "fail"
    assert "CUDA is not available" in checks["device"]["detail"]
    assert "device: auto or cpu" in checks["device"]["fix"]
    assert "tensor check" not in checks


def test_human_table_is_aligned_and_shows_fixes(tmp_path: Path) -> None:
    code, text = run_doctor(write_config(tmp_path))  # model dir missing: one failure
    assert code == 1
    lines = text.splitlines()
    header = lines[0]
    assert header.split() == ["STATUS", "CHECK", "DETAIL"]
    detail_col = header.index("DETAIL")
    rows = [line for line in lines[1:] if line[:6].strip() in ("ok", "WARN", "FAIL")]
    assert len(rows) >= 8
    for row in rows:
        assert row[detail_col - 2 : detail_col] == "  " and row[detail_col] != " ", row
    fail_row = next(i for i, line in enumerate(lines) if line.startswith("FAIL") and "model tiny" in line)
    assert lines[fail_row + 1].strip().startswith("fix: ")
    assert lines[fail_row + 1].index("fix:") == detail_col
    assert "failure(s)" in lines[-1]


def test_json_output_is_a_list_of_checks(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "models" / "tiny")
    code, text = run_doctor(write_config(tmp_path), as_json=True)
    data = json.loads(text)
    assert isinstance(data, list) and data
    assert all(set(item) == {"name", "status", "detail", "fix"} for item in data)
    names = [item["name"] for item in data]
    for expected in (
        "python",
        "torch",
        "cuda",
        "host memory",
        "device",
        "tensor check",
        "config",
        "spool",
        "model tiny",
        "systemd-python",
    ):
        assert expected in names
    assert code == 0


def test_a_crashing_check_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_checkpoint(tmp_path / "models" / "tiny")

    def broken(settings: Any) -> Any:
        raise OSError("disk on fire")

    monkeypatch.setattr(doc.runner, "check_spool", broken)  # runner looks its checks up there
    code, checks = checks_by_name(write_config(tmp_path))
    assert code == 1
    assert "disk on fire" in checks["spool"]["detail"]


def test_the_command_parses_its_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_checkpoint(tmp_path / "models" / "tiny")
    config = write_config(tmp_path)
    parser = argparse.ArgumentParser(prog="dgx-music")
    doctor_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["doctor", "--config", str(config), "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "python"


def test_doctor_reads_the_config_named_by_the_environment(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "models" / "tiny")
    config = write_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGX_MUSIC_")}
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", "doctor", "--json"],
        cwd=tmp_path,
        env={**env, "DGX_MUSIC_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert checks["config"]["status"] == "ok" and str(config) in checks["config"]["detail"], checks["config"]
    assert checks["spool"]["status"] == "ok", checks["spool"]
    for sub in SPOOL_DIRS:  # every spool folder the daemon uses is checked, from the one list
        assert f"{sub}/" in checks["spool"]["detail"]


def test_a_missing_spool_folder_is_reported(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "models" / "tiny")
    config = write_config(tmp_path)
    (tmp_path / "spool" / SPOOL_DIRS[-1]).rmdir()
    code, checks = checks_by_name(config)
    assert checks["spool"]["status"] == "warn" and f"missing {SPOOL_DIRS[-1]}/" in checks["spool"]["detail"]


def test_hints_quote_the_versions_the_package_requires() -> None:
    from importlib import metadata

    try:
        declared = [r for r in metadata.requires("dgx-music") or [] if r.startswith("transformers")]
    except metadata.PackageNotFoundError:
        pytest.skip("dgx-music is not installed: no distribution metadata to read")
    spec = doc.requirement("transformers")
    assert spec.startswith("transformers") and spec != "transformers"
    assert spec.replace("transformers", "") in declared[0].replace(" ", "")
    assert doc.requirement("no-such-package") == "no-such-package"


def test_the_installed_cli_runs_doctor(tmp_path: Path) -> None:
    from daemon import cli

    if "doctor" not in cli.COMMAND_MODULES:
        pytest.skip("daemon.cli.COMMAND_MODULES does not list doctor yet")
    config = write_config(tmp_path)  # the model directory is missing: exit 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGX_MUSIC_")}
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", "doctor", "--config", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "FAIL" in proc.stdout and "dgx-music model init-tiny" in proc.stdout


# ---------------------------------------------------------------- devices


def test_cpu_device_and_dtypes() -> None:
    from daemon.engine.devices import cpu_has_native_bf16

    cpu = resolve_device("cpu")
    assert cpu == torch.device("cpu")
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_dtype("float32", cpu) == torch.float32


def test_float16_on_cpu_becomes_float32_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="daemon.engine.devices"):
        assert resolve_dtype("float16", torch.device("cpu")) == torch.float32
    assert "float32" in caplog.text


@pytest.mark.skipif(CUDA, reason="CUDA is present here")
def test_auto_falls_back_to_cpu_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="daemon.engine.devices"):
        assert resolve_device("auto") == torch.device("cpu")
    assert "CPU" in caplog.text


@pytest.mark.skipif(CUDA, reason="CUDA is present here")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_explicit_cuda_without_cuda_is_a_typed_error(spec: str) -> None:
    with pytest.raises(DeviceError) as err:
        resolve_device(spec)
    assert "CUDA is not available" in str(err.value)
    assert err.value.hint and "doctor" in err.value.hint
    assert gpu_info() is None


@pytest.mark.parametrize("spec", ["tpu", "cuda:x"])
def test_nonsense_device_is_refused(spec: str) -> None:
    with pytest.raises(DeviceError):
        resolve_device(spec)


def test_bad_dtype_is_refused() -> None:
    with pytest.raises(DeviceError):
        resolve_dtype("int8", torch.device("cpu"))


@pytest.mark.parametrize(
    ("major", "minor", "archs", "expected"),
    [
        (12, 1, ["sm_80", "sm_90", "sm_121"], True),  # GB10 with native kernels
        (12, 1, ["sm_80", "sm_90", "sm_120"], True),  # same family, lower minor: binary compatible
        (12, 1, ["sm_80", "sm_90", "sm_100"], False),  # other major: no kernels
        (12, 1, ["sm_80", "compute_90"], True),  # PTX JIT-compiles forward
        (9, 0, ["sm_90a"], True),
        (8, 0, ["sm_86"], False),  # a newer minor does not run on an older device
        (9, 0, [], False),
    ],
)
def test_arch_support_rules(major: int, minor: int, archs: list[str], expected: bool) -> None:
    assert arch_supported(major, minor, archs) is expected


def _current_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_cpu_peak_memory_is_this_windows_rise_in_bytes() -> None:
    """On the CPU the peak is how far the resident set rose since the reset: a job's own, not
    the model's and not an earlier job's."""
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    # A fresh anonymous mapping: a heap block could reuse pages an earlier test freed (still
    # resident), and the resident set would not rise at all.
    block = mmap.mmap(-1, 64 << 20)
    for offset in range(0, 64 << 20, 4096):
        block[offset] = 1  # touch every page so it is resident
    peak = peak_memory_bytes(cpu)
    rss = _current_rss_bytes()
    # bytes, not KiB: about the 64 MiB touched, far below the whole process (torch is resident)
    assert 0.9 * (64 << 20) <= peak < rss
    block.close()
    reset_peak_memory(cpu)  # a new window does not inherit the 64 MiB
    assert peak_memory_bytes(cpu) < 16 << 20


@pytest.mark.gpu
def test_gpu_report_on_a_real_gpu(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "models" / "tiny")
    code, checks = checks_by_name(write_config(tmp_path, device="cuda"))
    assert checks["cuda"]["status"] == "ok"
    assert checks["gpu"]["detail"].split(",")[1].strip().startswith("compute capability sm_")
    assert checks["tensor check"]["status"] == "ok"
    # the image's Triton compiles the fused step's kernels (the load checks their results)
    assert checks["kernels"]["status"] == "ok" and "Triton" in checks["kernels"]["detail"], checks["kernels"]
    info = gpu_info()
    assert info is not None and info.total_memory_bytes > 0
    dev = resolve_device("cuda")
    assert resolve_dtype("auto", dev) in (torch.bfloat16, torch.float16)
    reset_peak_memory(dev)
    x = torch.ones(1 << 20, device=dev)
    assert peak_memory_bytes(dev) >= x.numel() * 4
    assert code == 0


def test_the_kernels_check_says_which_kernels_the_step_will_run(make_settings: Any) -> None:
    from daemon.engine.decoding.launches import kernels_problem
    from daemon.ops.doctor.platform_checks import check_kernels

    cpu = torch.device("cpu")  # the check is made for a GPU; the CPU (Triton's interpreter) stands in
    aten = check_kernels(cpu, make_settings(kernels="aten"))
    assert aten.status == "ok" and "plain PyTorch ops" in aten.detail
    default = check_kernels(cpu, make_settings())
    if kernels_problem(cpu) is None:
        assert default.status == "ok" and default.detail.startswith("Triton ")
    else:
        assert default.status == "warn" and "13 kernels a layer" in default.detail and default.fix
        forced = check_kernels(cpu, make_settings(kernels="triton"))
        assert forced.status == "fail" and "kernels: aten" in (forced.fix or "")


def test_an_ace_step_pipeline_is_judged_as_one(tmp_path: Path, tiny_acestep_dir: Path) -> None:
    """The model check follows the family: an ACE-Step folder passes whole, fails truncated."""
    import shutil

    song = tmp_path / "song"
    shutil.copytree(tiny_acestep_dir, song)
    config = write_config(tmp_path, models={"tiny": {"path": str(song), "family": "ace-step"}})
    code, checks = checks_by_name(config)
    assert checks["model tiny"]["status"] == "ok", checks["model tiny"]
    weights = sorted(song.glob("*/*.safetensors"))[0]
    weights.write_bytes(weights.read_bytes()[:-16])
    code, checks = checks_by_name(config)
    assert code == 1 and checks["model tiny"]["status"] == "fail"
    assert f"{weights.parent.name}/{weights.name}: truncated" in checks["model tiny"]["detail"]
