"""Triton kernels of the fused step: a layer norm fused into the matmul that reads its output.

Three matmuls of a MusicGen layer read a layer norm (q/k/v, the cross-attention query, fc1). Here
each of them is one kernel: a program computes its rows' mean and variance itself (the rows of a
decode step are few, at most 2 x max_batch, so recomputing them per program costs a few KiB of
cached reads), normalises as `F.layer_norm` does (float32 statistics, mean then variance, output
rounded to the model's dtype) and multiplies by its block of weight rows with float32 accumulation.
Epilogues:
  * after fc1, the exact-erf GELU (cuBLASLt's GELU epilogue is the tanh approximation, which
    MusicGen does not use), applied to the product rounded to the model's dtype as `gelu(mm(.))` is;
  * after q/k/v, the keys and values are stored straight into the KV cache at the step's position
    (the device-side position of a captured graph, or a host int eagerly), the queries into their
    own buffer in the attention's dtype.
A layer is then 8 kernels (these 3, 2 attentions, 3 matmuls carrying the residual add) instead of
13 (`daemon.engine.decoding.step`).

Triton compiles for CUDA; where no GPU exists its interpreter runs the same kernel on CPU tensors
(numpy underneath: slow, for tests and `bench --ops`). The interpreter's bf16 `tl.dot` is wrong
(seen with Triton 3.9), so there the operands are widened to float32 first: products of bf16
values are exact in float32, so only the accumulation order can differ from the compiled kernel.
It also truncates float32 to bf16 where the GPU rounds to nearest even: `_cast` rounds first.

Every launch is announced to `testseam.launch_observers` (`daemon.ops.opcount` counts them as
kernels). This module imports Triton; `launches.kernels_problem` says whether it can be used (and
imports it only where Triton is installed).
"""

# No `from __future__ import annotations`: Triton reads the kernel's `tl.constexpr` annotations as objects.

from contextlib import ExitStack
from typing import Any

import torch

from daemon.engine.decoding.testseam import interpret_triton_without_gpu, launch_observers

# Where there is no GPU the kernel can only be interpreted (see `testseam`).
INTERPRETED = interpret_triton_without_gpu()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch import nn  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

if INTERPRETED and isinstance(tl.sum, JITFunction):
    raise ImportError(
        "Triton was imported for compiling before TRITON_INTERPRET=1 was set, and this machine has no "
        "GPU: set TRITON_INTERPRET=1 in the environment to run the kernels in Triton's interpreter"
    )


@triton.jit
def _cast(x, dtype: tl.constexpr, ROUND: tl.constexpr):
    """float32 `x` to `dtype`, rounding to nearest even. The interpreter truncates float32 to
    bfloat16 (seen with Triton 3.9: half of all values off by one unit), so there the rounding is
    done on the bits first; compiled kernels round correctly by themselves."""
    if ROUND:
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _row_stats(X, rows, row_ok, K, stride_xm, eps, BLOCK_K: tl.constexpr):
    """Each row's mean and 1/std in float32: the mean first, then the variance about it (as
    F.layer_norm does: no E[x^2] - m^2). Both loops are software-pipelined (`tl.range` stages):
    a plain loop waits one memory round trip per K step before the next load is issued, two
    passes of K/64 of them per launch; staged, the loads are asynchronous copies in flight
    together, as the matmul loop's are (test_kernels_compile.py checks no plain load is left)."""
    total = tl.zeros(rows.shape, dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=3):
        ks = k0 + tl.arange(0, BLOCK_K)
        ok = row_ok[:, None] & (ks[None, :] < K)
        x = tl.load(X + rows[:, None] * stride_xm + ks[None, :], mask=ok, other=0.0).to(tl.float32)
        total += tl.sum(x, axis=1)
    mean = total / K
    squares = tl.zeros(rows.shape, dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=3):
        ks = k0 + tl.arange(0, BLOCK_K)
        ok = row_ok[:, None] & (ks[None, :] < K)
        x = tl.load(X + rows[:, None] * stride_xm + ks[None, :], mask=ok, other=0.0).to(tl.float32)
        centred = tl.where(ok, x - mean[:, None], 0.0)
        squares += tl.sum(centred * centred, axis=1)
    return mean, 1.0 / tl.sqrt(squares / K + eps)


@triton.jit
def _normed_product(X, W, GAMMA, BETA, rows, row_ok, cols, col_ok, mean, rstd, K, stride_xm, stride_wn,
                    F32_DOT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """The rows normalised (rounded to the weight's dtype) times this program's weight rows,
    accumulated in float32."""
    acc = tl.zeros((rows.shape[0], BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x_ok = row_ok[:, None] & k_ok[None, :]
        x = tl.load(X + rows[:, None] * stride_xm + ks[None, :], mask=x_ok, other=0.0).to(tl.float32)
        g = tl.load(GAMMA + ks, mask=k_ok, other=0.0).to(tl.float32)
        b = tl.load(BETA + ks, mask=k_ok, other=0.0).to(tl.float32)
        normed = (x - mean[:, None]) * rstd[:, None] * g[None, :] + b[None, :]
        normed = _cast(normed, W.dtype.element_ty, F32_DOT)
        w_ok = col_ok[:, None] & k_ok[None, :]
        w = tl.load(W + cols[:, None] * stride_wn + ks[None, :], mask=w_ok, other=0.0)
        if F32_DOT:
            acc += tl.dot(normed.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(normed, tl.trans(w))
    return acc


@triton.jit
def _store_kv(KV, y, rows, row_ok, cols, col_ok, first, tokens, kv_s0, kv_s1, kv_s2, kv_s3, kv_s4,
              q_cols, head_dim, F32_DOT: tl.constexpr):  # fmt: skip
    """The key and value columns (those past `q_cols`) into the cache [2, R, H, S, D], each row's
    tokens at positions first .. first + tokens - 1."""
    c = tl.where(cols < q_cols, 0, cols - q_cols)
    col_off = (c // q_cols) * kv_s0 + ((c % q_cols) // head_dim) * kv_s2 + (c % head_dim) * kv_s4
    row_off = (rows // tokens) * kv_s1 + (first + rows % tokens) * kv_s3
    ok = row_ok[:, None] & (col_ok & (cols >= q_cols))[None, :]
    tl.store(KV + row_off[:, None] + col_off[None, :], _cast(y, KV.dtype.element_ty, F32_DOT), mask=ok)


@triton.jit(do_not_specialize=["pos0"])
def _norm_linear(
    X, W, OUT, GAMMA, BETA,  # [M, K] rows, [N, K] weight rows, [M, N] (or [M, q_cols]), [K], [K]
    KV, POS,  # cache [2, R, H, S, D] (any strides), written when TO_CACHE; [1] int64 first position
    M, N, K, pos0, tokens, eps, stride_xm, stride_wn, stride_om,
    kv_s0, kv_s1, kv_s2, kv_s3, kv_s4, q_cols, head_dim,
    GELU: tl.constexpr, TO_CACHE: tl.constexpr, POS_ON_DEVICE: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    mean, rstd = _row_stats(X, rows, row_ok, K, stride_xm, eps, BLOCK_K)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    y = _normed_product(X, W, GAMMA, BETA, rows, row_ok, cols, col_ok, mean, rstd, K, stride_xm, stride_wn,
                        F32_DOT, BLOCK_N, BLOCK_K)  # fmt: skip
    if GELU:
        y = _cast(y, OUT.dtype.element_ty, F32_DOT).to(tl.float32)
        y = 0.5 * y * (1.0 + tl.erf(y * 0.7071067811865476))
    out_ok = col_ok
    if TO_CACHE:
        out_ok = col_ok & (cols < q_cols)
        first = tl.load(POS) if POS_ON_DEVICE else pos0
        _store_kv(KV, y, rows, row_ok, cols, col_ok, first, tokens, kv_s0, kv_s1, kv_s2, kv_s3, kv_s4,
                  q_cols, head_dim, F32_DOT)  # fmt: skip
    out = OUT + rows[:, None] * stride_om + cols[None, :]
    tl.store(out, _cast(y, OUT.dtype.element_ty, F32_DOT), mask=row_ok[:, None] & out_ok[None, :])


def _blocks(m: int, n: int, k: int, interpreted: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps). On a GPU: all rows of a decode step in one block,
    narrow column blocks so that even a 1024-column weight is spread over 64 programs (a decode
    matmul is bound by streaming the weight, which needs many programs in flight), and 64-deep K
    steps, which keep the registers a thread low enough for several programs an SM (the counts are
    in docs/gpu.md, checked by test_kernels_compile.py). Interpreted: big blocks, as each program
    costs the interpreter the same whatever its size (64 columns for small matrices, so that the
    tests still cover several programs)."""
    block_m = min(64, max(16, 1 << max(0, (m - 1).bit_length())))
    if interpreted:
        return block_m, 1024 if n > 1024 else 64, min(1024, max(16, 1 << max(0, (k - 1).bit_length()))), 4
    return block_m, 16 if n <= 2048 else 32, 64, 4


def _launch(name: str, grid: tuple[int, int], *args: Any, **meta: Any) -> None:
    with ExitStack() as stack:
        for observer in launch_observers:
            stack.enter_context(observer(name))
        _norm_linear[grid](*args, **meta)


def norm_linear(
    x: torch.Tensor,  # [M, K]
    norm: nn.LayerNorm,
    weight: torch.Tensor,  # [N, K]
    *,
    gelu: bool = False,
) -> torch.Tensor:
    """`layer_norm(x) @ weight.T` (then GELU) in one kernel: [M, N] in x's dtype."""
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    _run(
        x, norm, weight, out, None, None, 0, 1, gelu=gelu, name="norm_linear_gelu" if gelu else "norm_linear"
    )
    return out


def norm_qkv(
    x: torch.Tensor,  # [R*n, E]
    norm: nn.LayerNorm,
    weight: torch.Tensor,  # [3E, E]: q, k, v rows
    kv: torch.Tensor,  # [2, R, H, S, D]
    position: int | torch.Tensor,  # the first token's position (an int, or a [1] int64 tensor)
    tokens: int,  # n: tokens per row
) -> torch.Tensor:
    """`layer_norm(x) @ weight.T` split three ways in one kernel: k and v written into `kv` at
    positions position .. position + tokens - 1 of each row, q returned ([R*n, E], kv's dtype)."""
    m = x.shape[0]
    q_cols = weight.shape[0] // 3
    q = torch.empty((m, q_cols), dtype=kv.dtype, device=x.device)
    _run(x, norm, weight, q, kv, position, q_cols, tokens, gelu=False, name="norm_qkv_cache")
    return q


def _check(x: torch.Tensor, norm: nn.LayerNorm, weight: torch.Tensor) -> None:
    """What the kernel assumes of its operands, and that this process runs kernels on their device."""
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("norm_linear needs row-major x and weight (unit stride along K)")
    if norm.weight is None or norm.bias is None:
        raise ValueError("norm_linear expects a layer norm with weight and bias")
    if (x.device.type == "cpu") != INTERPRETED:
        raise ValueError(
            f"the Triton kernels run on {'CPU' if INTERPRETED else 'CUDA'} tensors in this process, "
            f"not on {x.device.type} ones"
        )


def _run(
    x: torch.Tensor,
    norm: nn.LayerNorm,
    weight: torch.Tensor,
    out: torch.Tensor,
    kv: torch.Tensor | None,
    position: int | torch.Tensor | None,
    q_cols: int,
    tokens: int,
    *,
    gelu: bool,
    name: str,
) -> None:
    _check(x, norm, weight)
    m, k = x.shape
    n = weight.shape[0]
    interpreted = x.device.type == "cpu"
    block_m, block_n, block_k, warps = _blocks(m, n, k, interpreted)
    on_device = isinstance(position, torch.Tensor)
    cache = kv if kv is not None else out  # an unused pointer when not writing the cache
    strides = kv.stride() if kv is not None else (0, 0, 0, 0, 0)
    head_dim = kv.shape[-1] if kv is not None else 1
    pos_tensor = position if isinstance(position, torch.Tensor) else out  # unused when on the host
    grid = ((n + block_n - 1) // block_n, (m + block_m - 1) // block_m)
    meta: dict[str, Any] = {
        "GELU": gelu,
        "TO_CACHE": kv is not None,
        "POS_ON_DEVICE": on_device,
        "F32_DOT": interpreted or weight.dtype == torch.float32,
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "BLOCK_K": block_k,
    }
    if not interpreted:
        meta["num_warps"] = warps
    _launch(
        name,
        grid,
        x,
        weight,
        out,
        norm.weight,
        norm.bias,
        cache,
        pos_tensor,
        m,
        n,
        k,
        0 if on_device or position is None else int(position),
        max(1, tokens),
        float(norm.eps),
        x.stride(0),
        weight.stride(0),
        out.stride(0),
        *strides,
        max(1, q_cols),
        head_dim,
        **meta,
    )
