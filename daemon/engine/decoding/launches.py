"""Whether the fused step's Triton kernels can launch here.

Kept apart from `daemon.engine.decoding.kernels` (which imports Triton) so that the choice can be
made where Triton is not installed; it imports that module, never the other way round.
"""

from __future__ import annotations

import importlib.util

import torch


def kernels_problem(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on `device` (None when they can; on a CPU they run in
    Triton's interpreter, which is only for tests and op counts)."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (PyTorch's CUDA wheels bring it)"
    try:
        importlib.import_module("daemon.engine.decoding.kernels")
    except Exception as exc:  # noqa: BLE001 - a broken Triton (missing libraries, ABI) is unusable too
        return f"Triton does not import: {type(exc).__name__}: {exc}"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return f"the kernels are built for compute capability 8.0 or newer, not {major}.{minor}"
        return None
    if device.type == "cpu":
        return None
    return f"Triton has no backend for {device.type} devices"
