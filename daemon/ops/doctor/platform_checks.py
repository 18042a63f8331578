"""Platform checks: Python, torch and transformers (against the versions dgx-music requires),
CUDA, the GPU, host memory, the configured device and a tensor check."""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

from daemon.core.config import Settings
from daemon.ops.doctor.checks import Check, fail, ok, warn
from daemon.ops.doctor.checks import gib as _gib
from daemon.ops.doctor.requirements import requirement, version_problem

MIN_PYTHON = (3, 10)
LOW_GPU_FREE_BYTES = 2 << 30
LOW_HOST_AVAILABLE_BYTES = 4 << 30


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
        return fail(
            "torch",
            f"cannot import torch: {exc}",
            f"pip install '{requirement('torch')}' (a CUDA build on GPU machines)",
        )
    cuda = torch.version.cuda
    detail = f"torch {torch.__version__}, " + (f"built for CUDA {cuda}" if cuda else "CPU-only build")
    try:
        import transformers

        detail += f", transformers {transformers.__version__}"
    except ImportError as exc:
        return fail(
            "torch",
            f"{detail}; cannot import transformers: {exc}",
            f"pip install '{requirement('transformers')}'",
        )
    problems = [
        p
        for p in (
            version_problem("torch", torch.__version__.split("+")[0]),
            version_problem("transformers", transformers.__version__),
        )
        if p
    ]
    if problems:
        wanted = " ".join(f"'{requirement(n)}'" for n in ("torch", "transformers"))
        return fail("torch", f"{detail}; " + "; ".join(problems), f"pip install {wanted}")
    return ok("torch", detail)


def check_diffusers() -> Check:
    """diffusers, which ACE-Step models run through (its AceStepPipeline)."""
    try:
        import diffusers
    except ImportError as exc:
        return fail(
            "diffusers",
            f"cannot import diffusers: {exc}; ACE-Step models cannot load",
            f"pip install '{requirement('diffusers')}'",
        )
    detail = f"diffusers {diffusers.__version__}"
    problem = version_problem("diffusers", diffusers.__version__)
    if problem:
        return fail("diffusers", f"{detail}; {problem}", f"pip install '{requirement('diffusers')}'")
    try:
        from diffusers import AceStepPipeline  # noqa: F401
    except ImportError as exc:
        return fail(
            "diffusers",
            f"{detail} has no AceStepPipeline ({exc})",
            f"pip install '{requirement('diffusers')}'",
        )
    return ok("diffusers", f"{detail}: families musicgen (transformers) and ace-step (AceStepPipeline)")


def check_cuda(settings: Settings | None = None) -> Check:
    import torch

    from daemon.ops.torchbuild import choose, read_nvidia_smi

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return ok("cuda", f"available: {n} device{'s' if n != 1 else ''}, CUDA {torch.version.cuda}")
    fits = choose(read_nvidia_smi())
    if torch.version.cuda is None:
        why = f"torch {torch.__version__} is a CPU-only build"
        if fits.build == "cpu":
            return warn(
                "cuda",
                f"not available: {why}; {fits.why}; "
                f"the daemon falls back to the CPU ({_cpu_dtype(settings)}, slow)",
                "nothing to do without an NVIDIA GPU; with one: its driver, then install.sh --torch auto",
            )
        if fits.build is None:
            fix = fits.why
        else:
            fix = (
                f"install the {fits.build} build ({fits.why}): sudo ./systemd/install.sh --torch auto, "
                f"or pip install 'torch=={torch.__version__.split('+')[0]}' --index-url {fits.index_url}"
            )
    else:
        why = f"torch is built for CUDA {torch.version.cuda} but no GPU is visible"
        fix = "check the NVIDIA driver (nvidia-smi), /dev/nvidia* permissions and CUDA_VISIBLE_DEVICES"
        if fits.build is None or fits.build == "cpu":
            fix = f"{fits.why}; {fix}"
        elif fits.build != "cu" + torch.version.cuda.replace(".", "")[:3]:
            fix = f"{fix}; this driver's build is {fits.build} ({fits.why}): install.sh --torch auto"
    return warn(
        "cuda", f"not available: {why}; the daemon falls back to the CPU ({_cpu_dtype(settings)}, slow)", fix
    )


def _cpu_dtype(settings: Settings | None) -> str:
    """The dtype the daemon would really use on the CPU (bfloat16 where it computes it natively)."""
    import torch

    from daemon.engine.devices import resolve_dtype

    return str(resolve_dtype(settings.dtype if settings else "auto", torch.device("cpu"))).removeprefix(
        "torch."
    )


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
    checks = [
        ok(
            "gpu",
            f"cuda:{info.index} {info.name}, compute capability {info.compute_capability}, "
            f"{info.multi_processor_count} SMs, driver {info.driver_version or 'unknown'}",
        )
    ]
    arch_list = torch.cuda.get_arch_list()
    if info.compute_capability in arch_list:
        checks.append(
            ok("gpu arch", f"torch ships {info.compute_capability} kernels ({' '.join(arch_list)})")
        )
    elif info.arch_supported:
        checks.append(
            ok(
                "gpu arch",
                f"{info.compute_capability} runs torch's compatible kernels ({' '.join(arch_list)})",
            )
        )
    else:
        checks.append(
            warn(
                "gpu arch",
                f"torch {torch.__version__} has no kernels for {info.compute_capability} "
                f"(it has: {' '.join(arch_list) or 'none'})",
                "install a torch build that lists your GPU's sm in torch.cuda.get_arch_list() "
                "(GB10 / DGX Spark is sm_121: use a CUDA 12.9+ or 13 aarch64 wheel)",
            )
        )
    budget = settings.max_memory_gb * (1 << 30) if settings is not None else None
    mem = f"{_gib(info.total_memory_bytes)} total, {_gib(info.free_memory_bytes)} free"
    if settings is not None:
        mem += f", budget {settings.max_memory_gb:g} GB (max_memory_gb)"
    if info.free_memory_bytes < LOW_GPU_FREE_BYTES:
        checks.append(warn("gpu memory", mem, "another process holds the GPU memory: see nvidia-smi"))
    elif budget is not None and info.total_memory_bytes < budget:
        checks.append(
            warn(
                "gpu memory",
                mem,
                "the GPU is smaller than max_memory_gb: use a smaller model or lower the budget",
            )
        )
    else:
        checks.append(ok("gpu memory", mem))
    if info.bf16_supported:
        checks.append(ok("bf16", "supported: dtype auto uses bfloat16"))
    else:
        checks.append(
            warn(
                "bf16",
                "not supported: dtype auto uses float16",
                "none needed; float16 works (Ampere or newer adds bf16)",
            )
        )
    checks.append(check_kernels(torch.device("cuda", info.index), settings))
    return checks


def check_kernels(device: Any, settings: Settings | None) -> Check:
    """Whether the fused step's Triton kernels can run on the GPU (the load checks their results)."""
    from daemon.engine.decoding.launches import kernels_problem

    chosen = settings.kernels if settings is not None else "auto"
    if chosen == "aten":
        return ok("kernels", "kernels: aten in the config: the decode step runs on plain PyTorch ops")
    why = kernels_problem(device)
    if why is None:
        import triton

        return ok(
            "kernels",
            f"Triton {triton.__version__}: the fused step's kernels can run (checked again at load)",
        )
    fix = (
        "install the Triton your torch was built with (PyTorch's CUDA wheels bring it), or set kernels: aten"
    )
    if chosen == "triton":
        return fail("kernels", f"kernels: triton, but {why}", fix)
    return warn(
        "kernels", f"{why}: the decode step runs on plain PyTorch ops (13 kernels a layer, not 8)", fix
    )


def check_host_memory() -> Check:
    """System RAM: the CPU fallback holds the model there, and on GB10 the GPU shares it."""
    try:
        info = dict(
            line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line
        )
        total = int(info["MemTotal"].split()[0]) * 1024
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return ok("host memory", "unknown (no /proc/meminfo)")
    detail = f"{_gib(total)} total, {_gib(available)} available"
    if available < LOW_HOST_AVAILABLE_BYTES:
        return warn(
            "host memory",
            detail,
            "free memory: loading musicgen-small needs about 3 GiB, -large about 14 GiB (float32)",
        )
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
    checks = [
        ok("device", f"{device_spec} -> {device}, dtype {dtype_spec} -> {str(dtype).removeprefix('torch.')}")
    ]
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
        return fail(
            "tensor check",
            detail,
            "results are wrong: check the driver, GPU health (nvidia-smi -q) and dmesg for Xid errors",
        )
    return ok("tensor check", detail)
