"""`dgx-music doctor`: can this machine run the daemon, and if not, what to do about it.

The seed system's GPU validation (torch and CUDA versions, device name and compute
capability, memory, bf16, a tensor check) plus the things that stop a fresh install:
the config, the spool, the model files. Each check is ok, warn (works, but not as
intended: e.g. CPU fallback) or fail (the daemon will not run), and every non-ok check
says how to fix it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from daemon.core.config import ConfigError, ModelSpec, Settings, load_settings
from daemon.engine.hub import hf_cache_dir, hf_offline

Status = Literal["ok", "warn", "fail"]

MIN_PYTHON = (3, 10)
SPOOL_SUBDIRS = ("inbox", "work", "outbox", "failed")
LOW_GPU_FREE_BYTES = 2 << 30
LOW_DISK_FREE_BYTES = 1 << 30
LOW_HOST_AVAILABLE_BYTES = 4 << 30
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def _gib(n: int | float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


# ---------------------------------------------------------------- platform


def check_python() -> Check:
    v = sys.version_info
    detail = f"{platform.python_version()} ({sys.executable}, {platform.machine()})"
    if (v.major, v.minor) < MIN_PYTHON:
        return fail("python", detail, f"use Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer")
    return ok("python", detail)


def check_torch() -> Check:
    try:
        import torch
    except ImportError as exc:
        return fail("torch", f"cannot import torch: {exc}", "install torch (a CUDA build on GPU machines)")
    cuda = torch.version.cuda
    detail = f"torch {torch.__version__}, " + (f"built for CUDA {cuda}" if cuda else "CPU-only build")
    try:
        import transformers

        detail += f", transformers {transformers.__version__}"
    except ImportError as exc:
        return fail("torch", f"{detail}; cannot import transformers: {exc}", "pip install 'transformers>=4.45'")
    return ok("torch", detail)


def check_cuda() -> Check:
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return ok("cuda", f"available: {n} device{'s' if n != 1 else ''}, CUDA {torch.version.cuda}")
    if torch.version.cuda is None:
        why = f"torch {torch.__version__} is a CPU-only build"
        fix = (
            "install a CUDA build of torch (e.g. pip install torch --index-url "
            "https://download.pytorch.org/whl/cu130, which has aarch64 wheels for DGX Spark)"
        )
    else:
        why = f"torch is built for CUDA {torch.version.cuda} but no GPU is visible"
        fix = "check the NVIDIA driver (nvidia-smi), /dev/nvidia* permissions and CUDA_VISIBLE_DEVICES"
    return warn("cuda", f"not available: {why}; the daemon falls back to the CPU (float32, slow)", fix)


def check_gpu(settings: Settings | None) -> list[Check]:
    """Device name, compute capability, kernels for it, memory and bf16: only with CUDA."""
    import torch

    from daemon.engine.devices import gpu_info

    if not torch.cuda.is_available():
        return []
    index = torch.cuda.current_device()
    if settings is not None and settings.device.startswith("cuda:"):
        index = int(settings.device.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            return []  # check_device reports the bad index
    info = gpu_info(index)
    assert info is not None
    checks = [ok("gpu", f"cuda:{info.index} {info.name}, compute capability {info.compute_capability}, "
                        f"{info.multi_processor_count} SMs, driver {info.driver_version or 'unknown'}")]
    arch_list = torch.cuda.get_arch_list()
    if info.compute_capability in arch_list:
        checks.append(ok("gpu arch", f"torch ships {info.compute_capability} kernels ({' '.join(arch_list)})"))
    elif info.arch_supported:
        checks.append(ok("gpu arch", f"{info.compute_capability} runs torch's compatible kernels ({' '.join(arch_list)})"))
    else:
        checks.append(warn(
            "gpu arch",
            f"torch {torch.__version__} has no kernels for {info.compute_capability} (it has: {' '.join(arch_list) or 'none'})",
            "install a torch build that lists your GPU's sm in torch.cuda.get_arch_list() "
            "(GB10 / DGX Spark is sm_121: use a CUDA 12.9+ or 13 aarch64 wheel)",
        ))
    budget = settings.max_memory_gb * (1 << 30) if settings is not None else None
    mem = f"{_gib(info.total_memory_bytes)} total, {_gib(info.free_memory_bytes)} free"
    if settings is not None:
        mem += f", budget {settings.max_memory_gb:g} GB (max_memory_gb)"
    if info.free_memory_bytes < LOW_GPU_FREE_BYTES:
        checks.append(warn("gpu memory", mem, "another process holds the GPU memory: see nvidia-smi"))
    elif budget is not None and info.total_memory_bytes < budget:
        checks.append(warn("gpu memory", mem, "the GPU is smaller than max_memory_gb: use a smaller model or lower the budget"))
    else:
        checks.append(ok("gpu memory", mem))
    if info.bf16_supported:
        checks.append(ok("bf16", "supported: dtype auto uses bfloat16"))
    else:
        checks.append(warn("bf16", "not supported: dtype auto uses float16", "none needed; float16 works (Ampere or newer adds bf16)"))
    return checks


def check_host_memory() -> Check:
    """System RAM: the CPU fallback holds the model there, and on GB10 the GPU shares it."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(info["MemTotal"].split()[0]) * 1024
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return ok("host memory", "unknown (no /proc/meminfo)")
    detail = f"{_gib(total)} total, {_gib(available)} available"
    if available < LOW_HOST_AVAILABLE_BYTES:
        return warn("host memory", detail, "free memory: loading musicgen-small needs about 3 GiB, -large about 14 GiB (float32)")
    return ok("host memory", detail)


def check_device(settings: Settings | None) -> list[Check]:
    """The configured device and dtype resolve, and a matmul there matches the CPU."""
    import torch

    from daemon.engine.devices import DeviceError, resolve_device, resolve_dtype

    device_spec = settings.device if settings is not None else "auto"
    dtype_spec = settings.dtype if settings is not None else "auto"
    try:
        device = resolve_device(device_spec)
        dtype = resolve_dtype(dtype_spec, device)
    except DeviceError as exc:
        return [fail("device", exc.message, exc.hint or "set device: auto in the config")]
    checks = [ok("device", f"{device_spec} -> {device}, dtype {dtype_spec} -> {str(dtype).removeprefix('torch.')}")]
    checks.append(_tensor_check(torch, device, dtype))
    return checks


def _tensor_check(torch: Any, device: Any, dtype: Any) -> Check:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, 256, generator=gen)
    b = torch.randn(256, 256, generator=gen)
    reference = (a.double() @ b.double()).float()
    try:
        got32 = (a.to(device) @ b.to(device)).cpu()
        got = (a.to(device, dtype) @ b.to(device, dtype)).float().cpu()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except RuntimeError as exc:
        return fail(
            "tensor check",
            f"a matmul on {device} failed: {str(exc).splitlines()[0]}",
            "'no kernel image' means torch lacks kernels for this GPU: install a build for its sm; "
            "otherwise check the driver and dmesg",
        )
    scale = float(reference.abs().max())
    err32 = float((got32 - reference).abs().max()) / scale
    err = float((got - reference).abs().max()) / scale
    # fp32 (TF32 when enabled) stays well under 1e-2; half precision sums 256 products: ~1e-2
    tol = 2e-3 if dtype == torch.float32 else 3e-2
    detail = f"256x256 matmul on {device} vs CPU float64: rel. error {err32:.1e} (float32)"
    if dtype != torch.float32:
        detail += f", {err:.1e} ({str(dtype).removeprefix('torch.')})"
    if err32 > 2e-3 or err > tol:
        return fail("tensor check", detail, "results are wrong: check the driver, GPU health (nvidia-smi -q) and dmesg for Xid errors")
    return ok("tensor check", detail)


# ---------------------------------------------------------------- config and spool


def check_config(path: Path | None) -> tuple[Check, Settings | None]:
    where = str(path) if path is not None else "defaults + DGX_MUSIC_* environment"
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        if path is not None and not path.exists():
            fix = f"create {path} from systemd/config.example.yaml, or pass --config FILE"
        else:
            fix = "fix the named key (the example: systemd/config.example.yaml)"
        return fail("config", f"{where}: {exc}" if path is None else str(exc), fix), None
    models = ", ".join(sorted(settings.models))
    return ok("config", f"{where}: models {models}, default {settings.default_model}, device {settings.device}"), settings


def _writable(directory: Path) -> str | None:
    """None when a file can be created and removed in `directory`, else the error."""
    probe = directory / f".doctor.{os.getpid()}.tmp"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_spool(settings: Settings) -> Check:
    spool = settings.spool
    user = _user()
    mkfix = (
        f"create it: systemd-tmpfiles --create dgx-music.conf, or mkdir -p {spool}/{{{','.join(SPOOL_SUBDIRS)}}} "
        "owned by the dgx-music user"
    )
    if not spool.exists():
        return fail("spool", f"{spool} does not exist", mkfix)
    if not spool.is_dir():
        return fail("spool", f"{spool} is not a directory", "point spool: at a directory")
    problems: list[str] = []
    missing = [d for d in SPOOL_SUBDIRS if not (spool / d).is_dir()]
    devices = {}
    for name in SPOOL_SUBDIRS:
        sub = spool / name
        if not sub.is_dir():
            continue
        devices[name] = sub.stat().st_dev
        err = _writable(sub)
        if err is not None:
            problems.append(f"{name}/ not writable by {user} ({err})")
    if len(set(devices.values())) > 1:
        groups = ", ".join(f"{k}/ on dev {v}" for k, v in devices.items())
        return fail("spool", f"{spool}: subdirectories on different filesystems ({groups}): renames would not be atomic",
                    "keep inbox/ work/ outbox/ failed/ on one filesystem (no separate mounts below the spool)")
    if problems:
        return fail("spool", f"{spool}: " + "; ".join(problems),
                    f"run doctor as the daemon's user, or chown -R dgx-music {spool} (submitters need group write on inbox/)")
    free = shutil.disk_usage(spool).free
    if missing:
        return warn("spool", f"{spool}: missing {', '.join(d + '/' for d in missing)} (the daemon creates them at start)",
                    mkfix)
    if free < LOW_DISK_FREE_BYTES:
        return warn("spool", f"{spool}: only {_gib(free)} free", "free disk space: a 300 s FLOAT WAV is about 77 MB")
    return ok("spool", f"{spool}: {', '.join(d + '/' for d in SPOOL_SUBDIRS)} writable by {user}, one filesystem, {_gib(free)} free")


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


# ---------------------------------------------------------------- models


def check_model(name: str, spec: ModelSpec) -> Check:
    label = f"model {name}"
    if spec.path is not None:
        return _check_local_model(label, spec.path)
    return _check_hub_model(label, name, spec)


def _check_local_model(label: str, path: Path) -> Check:
    init_fix = f"point models.<name>.path at a save_pretrained directory, or make one: dgx-music model init-tiny {path}"
    if not path.is_dir():
        return fail(label, f"{path}: no such directory", init_fix)
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer (tokenizer.json or spiece.model)")
    if not any((path / f).is_file() for f in PROCESSOR_FILES):
        missing.append("preprocessor_config.json")
    if missing:
        return fail(label, f"{path}: missing {', '.join(missing)}", init_fix)
    unreadable = [f.name for f in path.iterdir() if f.is_file() and not os.access(f, os.R_OK)]
    if unreadable:
        return fail(label, f"{path}: not readable by {_user()}: {', '.join(sorted(unreadable))}",
                    f"chmod a+r {path}/* (safetensors files are written 0600)")
    for weights in sorted(path.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            return fail(label, f"{weights}: {problem}", "the checkpoint is damaged: copy or save it again")
    return ok(label, f"local checkpoint {path}")


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be whole (truncated, corrupt header), or None.

    Reads only the header: 8 bytes of length, the JSON index, and checks that the tensors'
    data ends exactly at the end of the file, which is what a truncated copy breaks.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return "truncated (no header)"
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                return "corrupt header length"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:
        return f"unreadable header ({exc})"
    if not isinstance(header, dict):
        return "corrupt header"
    ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        return f"truncated or padded: header says {expected} bytes, file has {size}"
    return None


def _check_hub_model(label: str, name: str, spec: ModelSpec) -> Check:
    from huggingface_hub import try_to_load_from_cache

    repo, revision = str(spec.id), spec.revision
    cache = hf_cache_dir()
    fetch = f"run dgx-music model fetch {name} (on a machine with network access to huggingface.co)"

    def cached(filename: str) -> Path | None:
        hit = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision)
        return Path(hit) if isinstance(hit, str) else None

    config = cached("config.json")
    weights = [f for f in WEIGHT_FILES if cached(f) is not None]
    shards_missing: list[str] = []
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = cached(index_name)
        if index is None:
            continue
        try:
            shard_names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError):
            shards_missing.append(index_name + " (unreadable)")
            continue
        shards_missing.extend(s for s in shard_names if cached(s) is None)
    where = f"{repo}@{revision} in {cache}"
    if config is not None and weights and not shards_missing:
        return ok(label, f"{where}: cached ({config.parent.name[:12]})")
    what = "not in the cache" if config is None else "partly cached: missing " + (
        ", ".join(shards_missing) if shards_missing else "weights"
    )
    if hf_offline():
        return fail(label, f"{where}: {what}, and HF_HUB_OFFLINE is set", fetch)
    return warn(label, f"{where}: {what}; it will be downloaded at first load", fetch + " to do it now")


# ---------------------------------------------------------------- systemd


def check_systemd() -> Check:
    try:
        from systemd import daemon as _d, journal as _j  # noqa: F401
    except ImportError:
        return warn(
            "systemd-python",
            "not importable: sd_notify works through the built-in fallback, but logs reach the journal "
            "without JOB_ID/MODEL/STAGE fields",
            "apt install python3-systemd (or pip install systemd-python, which needs libsystemd-dev)",
        )
    return ok("systemd-python", "importable: journal fields and sd_notify via libsystemd")


# ---------------------------------------------------------------- all together


def _guard(name: str, fn: Callable[[], Check | list[Check]]) -> list[Check]:
    """Run one check; an unexpected exception becomes a failed check, not a traceback."""
    try:
        result = fn()
    except Exception as exc:  # doctor must report every problem it meets, not stop at the first
        return [fail(name, f"the check itself crashed: {type(exc).__name__}: {exc}",
                     "report this as a dgx-music bug, with the output of dgx-music doctor --json")]
    return result if isinstance(result, list) else [result]


def run_checks(config_path: Path | str | None) -> list[Check]:
    """Every check, in the order a person fixing a fresh install should read them."""
    checks: list[Check] = []
    checks += _guard("python", check_python)
    torch_checks = _guard("torch", check_torch)
    checks += torch_checks
    config_check, settings = check_config(Path(config_path) if config_path is not None else None)
    if torch_checks[0].status != "fail":
        checks += _guard("cuda", check_cuda)
        checks += _guard("gpu", lambda: check_gpu(settings))
        checks += _guard("host memory", check_host_memory)
        checks += _guard("device", lambda: check_device(settings))
    checks.append(config_check)
    if settings is not None:
        checks += _guard("spool", lambda: check_spool(settings))
        for name, spec in settings.models.items():
            checks += _guard(f"model {name}", lambda n=name, s=spec: check_model(n, s))
    checks += _guard("systemd-python", check_systemd)
    return checks


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == "fail" for c in checks) else 0


def format_table(checks: list[Check]) -> str:
    """An aligned table: status, check, detail; the fix on its own line under a non-ok row."""
    width = max([len(c.name) for c in checks] + [len("CHECK")])
    label = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}
    lines = [f"{'STATUS':<6}  {'CHECK':<{width}}  DETAIL"]
    indent = " " * (6 + 2 + width + 2)
    for c in checks:
        detail_lines = c.detail.splitlines() or [""]
        lines.append(f"{label[c.status]:<6}  {c.name:<{width}}  {detail_lines[0]}")
        lines.extend(indent + d for d in detail_lines[1:])
        if c.fix:
            lines.append(f"{indent}fix: {c.fix}")
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("ok", "warn", "fail")}
    lines.append("")
    lines.append(f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s)")
    return "\n".join(lines)


def format_json(checks: list[Check]) -> str:
    return json.dumps([c.as_dict() for c in checks], indent=2)


@contextlib.contextmanager
def _quiet_device_warnings() -> Iterator[None]:
    """devices.resolve_device logs the CPU fallback; doctor reports it as a check instead."""
    import logging

    logger = logging.getLogger("daemon.engine.devices")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def doctor(config_path: Path | str | None, *, as_json: bool = False, out: Any = None) -> int:
    """Run every check, print the report, return the exit code (1 when a check failed)."""
    out = out if out is not None else sys.stdout
    with _quiet_device_warnings():
        checks = run_checks(config_path)
    print(format_json(checks) if as_json else format_table(checks), file=out)
    return exit_code(checks)
