"""Where the model runs: device and dtype from the config, what the GPU is, how much memory was used."""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

import torch

from daemon.core.errors import ModelLoadError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DeviceError(ModelLoadError):
    """The configured device or dtype cannot be used on this machine."""


def resolve_device(spec: str) -> torch.device:
    """`auto | cpu | cuda | cuda:N` -> a torch.device that exists here.

    auto falls back to the CPU with a WARNING (it works, slowly); naming CUDA explicitly
    where there is none is an error, because the operator asked for something specific.
    """
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        # No dtype here: it is resolved next (bfloat16 where the CPU has it) and logged with the load.
        log.warning("no CUDA device available: running on the CPU, expect generation to be slow")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        try:
            index = int(spec.split(":", 1)[1]) if ":" in spec else None
        except ValueError:
            raise DeviceError(f"device {spec!r} is not valid", hint="use auto, cpu, cuda or cuda:N") from None
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {spec!r} was configured but CUDA is not available "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})",
                hint="install a CUDA build of torch and the NVIDIA driver, or set device: auto or cpu; "
                "run `dgx-music doctor` for details",
            )
        count = torch.cuda.device_count()
        if index is None:
            index = torch.cuda.current_device()
        if index < 0 or index >= count:
            raise DeviceError(
                f"device {spec!r} does not exist: this machine has {count} CUDA device(s) "
                f"(cuda:0..cuda:{count - 1})",
                hint="pick an existing index, or check CUDA_VISIBLE_DEVICES",
            )
        return torch.device("cuda", index)
    raise DeviceError(f"device {spec!r} is not valid", hint="use auto, cpu, cuda or cuda:N")


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """`auto | float32 | float16 | bfloat16` for `device`.

    auto: bfloat16 on CUDA devices that support it, else float16; on the CPU, bfloat16 where it
    computes it natively (half the bytes a decode step streams), float32 otherwise. An explicit
    bfloat16 on the CPU is honoured (with a warning where emulated); float16 on the CPU becomes
    float32 with a warning. EnCodec always runs in float32 (the checkpoint loader).
    """
    spec = spec.strip().lower()
    if spec != "auto" and spec not in _DTYPES:
        raise DeviceError(f"dtype {spec!r} is not valid", hint="use auto, float32, float16 or bfloat16")
    if device.type != "cuda":
        native = cpu_has_native_bf16()
        if spec == "auto":
            return torch.bfloat16 if native else torch.float32
        if spec == "bfloat16":
            if not native:
                log.warning(
                    "dtype bfloat16 on a CPU without native bf16 (%s): expect it to be slower than float32",
                    device,
                )
            return torch.bfloat16
        if spec == "float16":
            log.warning("dtype float16 requested on %s: using float32 (float16 is a GPU feature)", device)
        return torch.float32
    if spec == "auto":
        return torch.bfloat16 if _bf16_supported(device) else torch.float16
    if spec == "bfloat16" and not _bf16_supported(device):
        raise DeviceError(
            f"dtype bfloat16 was configured but {torch.cuda.get_device_name(device)} does not support it",
            hint="set dtype: float16 or auto",
        )
    return _DTYPES[spec]


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively, from /proc/cpuinfo (or `cpuinfo`): x86's
    `flags` avx512_bf16 or amx_bf16, aarch64's `Features` bf16 (Armv8.6, the DGX Spark's cores)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return False
    wanted = {"flags": {"avx512_bf16", "amx_bf16"}, "features": {"bf16"}}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if wanted.get(key.strip().lower(), set()) & set(value.split()):
            return True
    return False


def _bf16_supported(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported())


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device as doctor, bench and the sidecar's host block describe it."""

    index: int
    name: str
    compute_capability: str  # "sm_121" for GB10, "sm_90" for H100
    total_memory_bytes: int
    free_memory_bytes: int
    bf16_supported: bool
    cuda_version: str | None  # the CUDA torch was built with
    driver_version: str | None
    arch_supported: bool  # the device's sm (or a compatible PTX) is in torch.cuda.get_arch_list()
    multi_processor_count: int


def gpu_info(device: torch.device | int | None = None) -> GpuInfo | None:
    """The CUDA device in use (default: the current one), or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    index = device.index if isinstance(device, torch.device) else device
    index = torch.cuda.current_device() if index is None else index
    props = torch.cuda.get_device_properties(index)
    major, minor = props.major, props.minor
    free, total = torch.cuda.mem_get_info(index)
    return GpuInfo(
        index=index,
        name=props.name,
        compute_capability=f"sm_{major}{minor}",
        total_memory_bytes=int(total),
        free_memory_bytes=int(free),
        bf16_supported=_bf16_supported(torch.device("cuda", index)),
        cuda_version=torch.version.cuda,
        driver_version=_driver_version(),
        arch_supported=arch_supported(major, minor, torch.cuda.get_arch_list()),
        multi_processor_count=int(props.multi_processor_count),
    )


def arch_supported(major: int, minor: int, arch_list: list[str]) -> bool:
    """Whether torch ships kernels this device can run.

    Exact `sm_XY` matches; so does a binary for the same major with a lower minor
    (sm_120 code runs on sm_121: same family); `compute_XY` PTX at or below the device
    JIT-compiles on it.
    """
    for arch in arch_list:
        kind, _, num = arch.partition("_")
        num = num.rstrip("af")  # sm_90a / sm_100f are family/arch-specific variants
        if not num.isdigit() or len(num) < 2:
            continue
        a_major, a_minor = int(num[:-1]), int(num[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def _driver_version() -> str | None:
    """The NVIDIA driver version through NVML (pynvml, where installed), else from /proc."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no pynvml, or NVML missing from the driver install (normal): /proc says it too
        pass
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as fh:
            first = fh.readline()
    except OSError:
        return None
    # "NVRM version: NVIDIA UNIX aarch64 Kernel Module  580.95.05  Thu ..."
    return next((t for t in first.split() if "." in t and t.replace(".", "").isdigit()), None)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory since the last reset_peak_memory(): this job's own.

    CUDA: torch.cuda.max_memory_allocated (tensors only, not the caching allocator's slack).
    CPU: how far the process's resident set rose above what it held at the reset: Linux's VmHWM,
    which the reset restarts from the current size (elsewhere, the lifetime peak).
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    high = _proc_status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(0, high - _cpu_window_start[0])


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        # "5" resets the high-water mark to the current resident set (Linux >= 4.0).
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _cpu_window_start[0] = _proc_status_bytes("VmRSS") or 0
    except OSError:
        _cpu_window_start[0] = 0  # not resettable here: the lifetime peak, nothing subtracted


_cpu_window_start = [0]  # resident bytes when the CPU window began


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
