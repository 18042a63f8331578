"""The fused step's matmuls: plain `mm`/`addmm` on the weight, or oneDNN's prepacked form on CPUs.

At decode batch sizes a matmul on the CPU is bound by streaming the weight, and oneDNN streams its
own blocked layout much faster than `mm` reads the row-major weight (figures in docs/gpu.md). The
results are
`mm`'s: bit for bit in bfloat16, to rounding in float32 (checked when a weight is packed; a pack
that does not reproduce `mm` is not used), and greedy tokens still equal transformers' (tested at
the small shape). The packed form is a second copy of the decoder's weights beside the model's own
(transformers' forward and the load-time probe read those), so CPU memory for the decoder doubles.
On CUDA the plain ops run (cuBLAS reads the weight as it is).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def available_memory() -> int | None:
    """Bytes of memory the kernel says can still be allocated without swapping (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def packing_wanted(device: torch.device, dtype: torch.dtype, weight_bytes: int = 0) -> bool:
    """Whether `weight_bytes` of weights on `device` in `dtype` are worth packing for oneDNN: on a
    CPU, in float32 or bfloat16, and only while the second copy leaves as much memory free again."""
    if not (
        device.type == "cpu"
        and dtype in (torch.bfloat16, torch.float32)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    ):
        return False
    free = available_memory()
    if free is not None and free < 2 * weight_bytes:
        log.info(
            "not packing the decoder's weights for oneDNN: %.1f GiB would leave %.1f GiB free",
            weight_bytes / 2**30,
            (free - weight_bytes) / 2**30,
        )
        return False
    return True


def _pack(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight` [out, in] in oneDNN's layout, or None when packing fails or changes the arithmetic."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        probe = torch.linspace(-1.0, 1.0, 3 * weight.shape[1], dtype=weight.dtype).view(3, -1)
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
    except (RuntimeError, AttributeError) as exc:  # an op missing or refused in this torch build
        log.debug("oneDNN weight packing unavailable (%s): plain matmuls", exc)
        return None
    try:
        torch.testing.assert_close(got, torch.mm(probe, weight.detach().t()))
    except AssertionError:
        log.debug("oneDNN packed matmul differs from mm on this machine: plain matmuls")
        return None
    return packed


class Linear:
    """x @ weight.T (and residual + x @ weight.T) for one bias-free projection."""

    def __init__(self, weight: torch.Tensor, *, pack: bool) -> None:
        self.weight = weight
        self.packed = _pack(weight) if pack else None

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return torch.mm(x, self.weight.t())
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")

    def addmm(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + x @ weight.T in one kernel; `residual` may be overwritten with the result.

        In place on the plain path: cuBLAS adds into its output, so an out-of-place `addmm` on a
        2-D residual is a copy of it plus the matmul, two kernels; `addmm_` is the matmul alone
        (the same arithmetic, bit for bit)."""
        if self.packed is None:
            return residual.addmm_(x, self.weight.t())
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, None, "add")
