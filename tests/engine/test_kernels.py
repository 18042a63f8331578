"""The fused step's Triton kernels (norm + matmul, + GELU, + KV-cache write) against PyTorch's own
ops, and the step built on them against transformers `generate`.

Without a GPU the kernels run in Triton's interpreter (the conftest sets TRITON_INTERPRET=1 before
anything imports Triton): the same kernel source, every load, mask and store executed, on CPU tensors.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from daemon.core.errors import GenerationError
from daemon.engine.decoding.api import RowSampling
from daemon.engine.decoding.dgx import DgxBackend
from daemon.engine.decoding.launches import kernels_problem
from daemon.engine.decoding.parts import model_parts
from daemon.engine.decoding.step import choose_kernels, fused_decoder, kernels_mismatch
from daemon.engine.decoding.testseam import GRAPH_SHAPED, run_steps
from tests.engine.test_fastdecode import GREEDY, PROMPTS, _request, _text, hf_greedy_codes

pytestmark = pytest.mark.skipif(
    kernels_problem(torch.device("cpu")) is not None, reason="Triton is not installed or does not import"
)

# Relative error limits (‖got − ref‖ / ‖ref‖) against a float64 reference computed from the same
# (rounded) inputs: float32 arithmetic lands far under 1e-5; bf16 rounds the norm's output and the
# product, 1e-3..1e-2.
LIMIT = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _reference(x: torch.Tensor, norm: torch.nn.LayerNorm, weight: torch.Tensor) -> torch.Tensor:
    """layer_norm(x) @ weight.T in float64."""
    return (
        F.layer_norm(x.double(), (x.shape[1],), norm.weight.double(), norm.bias.double(), norm.eps)
        @ weight.double().t()
    )


def _kernels() -> Any:
    from daemon.engine.decoding import kernels

    return kernels


def _norm(width: int, dtype: torch.dtype, gen: torch.Generator) -> torch.nn.LayerNorm:
    norm = torch.nn.LayerNorm(width).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(width, generator=gen) * 0.5 + 1.0)
        norm.bias.copy_(torch.randn(width, generator=gen) * 0.1)
    return norm


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, width, out", [(1, 64, 96), (3, 80, 200), (20, 48, 64)])
@pytest.mark.parametrize("gelu", [False, True])
def test_norm_linear_is_layer_norm_then_matmul(
    dtype: torch.dtype, rows: int, width: int, out: int, gelu: bool
) -> None:
    gen = torch.Generator().manual_seed(rows * 1000 + width + out + gelu)
    # An offset and a spread far from 0 and 1: the statistics must really be computed.
    x = (torch.randn(rows, width, generator=gen) * 4.0 + 3.0).to(dtype)
    norm = _norm(width, dtype, gen)
    weight = (torch.randn(out, width, generator=gen) / width**0.5).to(dtype)
    ref = _reference(x, norm, weight)
    if gelu:
        ref = F.gelu(ref)
    plain = F.layer_norm(x, (width,), norm.weight, norm.bias, norm.eps) @ weight.t()
    plain = F.gelu(plain) if gelu else plain
    got = _kernels().norm_linear(x, norm, weight, gelu=gelu)
    assert got.dtype == dtype and got.shape == (rows, out)
    assert torch.isfinite(got).all()
    assert _rel(got, ref) < LIMIT[dtype]
    # and no further from the truth than PyTorch's own ops at this dtype, give or take a rounding
    assert _rel(got, ref) < 1.5 * _rel(plain, ref) + LIMIT[dtype] / 10


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("on_device", [False, True])
def test_norm_qkv_writes_keys_and_values_into_the_cache_and_returns_queries(
    dtype: torch.dtype, tokens: int, on_device: bool
) -> None:
    gen = torch.Generator().manual_seed(tokens + 10 * on_device)
    rows, heads, head_dim, capacity, start = 3, 4, 16, 12, 5
    width = heads * head_dim
    x = torch.randn(rows * tokens, width, generator=gen).to(dtype)
    norm = _norm(width, dtype, gen)
    weight = (torch.randn(3 * width, width, generator=gen) / width**0.5).to(dtype)
    # A view into a bigger cache, as a layer's slice of the bucket's [L, 2, R, H, S, D] tensor cut at
    # a chunk end: strides that are not the view's own shape's.
    whole = torch.full((2, 2, rows, heads, capacity + 4, head_dim), 7.0, dtype=dtype)
    kv = whole[1, :, :, :, :capacity]
    before = whole.clone()
    position = torch.tensor([start]) if on_device else start
    q = _kernels().norm_qkv(x, norm, weight, kv, position, tokens)

    full = _reference(x, norm, weight).view(rows, tokens, 3, heads, head_dim)
    assert q.shape == (rows * tokens, width) and q.dtype == kv.dtype
    assert _rel(q, full[:, :, 0].reshape(rows * tokens, width)) < LIMIT[dtype]
    written = slice(start, start + tokens)
    assert _rel(kv[0, :, :, written], full[:, :, 1].transpose(1, 2)) < LIMIT[dtype]
    assert _rel(kv[1, :, :, written], full[:, :, 2].transpose(1, 2)) < LIMIT[dtype]
    # Nothing else in the whole cache moved.
    mask = torch.ones_like(whole, dtype=torch.bool)
    mask[1, :, :, :, written] = False
    assert torch.equal(whole[mask], before[mask])


@pytest.fixture
def gpu_blocks(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """The block shapes a GPU launches (16/32 columns, 64-deep K) run through the interpreter.

    The interpreter's own shapes cover up to 1024 columns and 1024-deep K in one program, so at the
    tiny model's sizes every loop runs once; a GPU walks K in 64-deep steps across many programs.
    Returns (BLOCK_N, BLOCK_K) for the widths used here."""
    kernels = _kernels()
    chosen = kernels._blocks

    def as_on_a_gpu(m: int, n: int, k: int, interpreted: bool) -> tuple[int, int, int, int]:
        return chosen(m, n, k, False)

    monkeypatch.setattr(kernels, "_blocks", as_on_a_gpu)
    _, block_n, block_k, _ = chosen(4, 100, 1100, False)
    return block_n, block_k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "rows, width, out, gelu",
    # K several 64-deep blocks and not a multiple of one (1100 = 17 x 64 + 12), and a musicgen-large
    # fc2-like depth (4096 = 64 blocks); N not a multiple of the 16/32-column blocks.
    [(3, 1100, 37, False), (2, 4096, 21, True)],
)
def test_gpu_block_shapes_walk_every_k_block_and_column_block(
    gpu_blocks: tuple[int, int], dtype: torch.dtype, rows: int, width: int, out: int, gelu: bool
) -> None:
    block_n, block_k = gpu_blocks
    assert width > 8 * block_k and out > block_n and out % block_n
    gen = torch.Generator().manual_seed(width + out)
    x = (torch.randn(rows, width, generator=gen) * 4.0 + 3.0).to(dtype)
    norm = _norm(width, dtype, gen)
    weight = (torch.randn(out, width, generator=gen) / width**0.5).to(dtype)
    ref = _reference(x, norm, weight)
    ref = F.gelu(ref) if gelu else ref
    got = _kernels().norm_linear(x, norm, weight, gelu=gelu)
    assert got.shape == (rows, out) and torch.isfinite(got).all()
    # Per column block too: a block that stopped early or was never launched shows on its own.
    for c0 in range(0, out, block_n):
        part = slice(c0, c0 + block_n)
        assert _rel(got[:, part], ref[:, part]) < LIMIT[dtype], (c0, _rel(got[:, part], ref[:, part]))


def test_gpu_block_shapes_write_the_cache_of_a_wide_layer(gpu_blocks: tuple[int, int]) -> None:
    """q/k/v at the GPU's block shapes with K = 1100: every key and value column block written."""
    gen = torch.Generator().manual_seed(1100)
    rows, heads, head_dim, capacity, start = 2, 1, 24, 6, 3  # 3 x 24 = 72 columns: 4.5 blocks of 16
    width = 1100
    x = torch.randn(rows, width, generator=gen).to(torch.bfloat16)
    norm = _norm(width, torch.bfloat16, gen)
    weight = (torch.randn(3 * heads * head_dim, width, generator=gen) / width**0.5).to(torch.bfloat16)
    kv = torch.zeros((2, rows, heads, capacity, head_dim), dtype=torch.bfloat16)
    q = _kernels().norm_qkv(x, norm, weight, kv, start, 1)
    full = _reference(x, norm, weight).view(rows, 3, heads, head_dim)
    assert _rel(q, full[:, 0].reshape(rows, heads * head_dim)) < LIMIT[torch.bfloat16]
    assert _rel(kv[0, :, :, start], full[:, 1]) < LIMIT[torch.bfloat16]
    assert _rel(kv[1, :, :, start], full[:, 2]) < LIMIT[torch.bfloat16]


def test_the_kernels_refuse_inputs_they_cannot_read() -> None:
    norm = torch.nn.LayerNorm(32)
    x = torch.randn(32, 4).t()  # column-major rows
    with pytest.raises(ValueError, match="row-major"):
        _kernels().norm_linear(x, norm, torch.randn(8, 32))
    with pytest.raises(ValueError, match="weight and bias"):
        _kernels().norm_linear(
            torch.randn(4, 32), torch.nn.LayerNorm(32, elementwise_affine=False), torch.randn(8, 32)
        )


# ---------------------------------------------------------------- the step on the kernels


@pytest.mark.parametrize("steps", [None, GRAPH_SHAPED])
@pytest.mark.parametrize("cfg_coef", [1.0, 3.0])
def test_greedy_on_the_kernels_matches_transformers_generate(
    tiny: tuple[Any, Any], steps: str | None, cfg_coef: float
) -> None:
    model, processor = tiny
    enc = _text(processor, PROMPTS[:2])
    expected = hf_greedy_codes(model, enc, cfg_coef, 12)
    backend = DgxBackend(kernels="triton")
    if steps is not None:
        run_steps(backend, steps)
    got = backend.decode(model, _request(enc, [GREEDY, GREEDY], cfg_coef, 12))
    assert backend.kernels_for(model) == "triton"
    assert fused_decoder(model_parts(model)).kernels == "triton"
    assert torch.equal(got, expected)


def test_stereo_greedy_on_the_kernels_matches_transformers_generate(tiny_stereo: tuple[Any, Any]) -> None:
    model, processor = tiny_stereo
    enc = _text(processor, PROMPTS[:1])
    expected = hf_greedy_codes(model, enc, 3.0, 8)
    got = run_steps(DgxBackend(kernels="triton"), GRAPH_SHAPED).decode(model, _request(enc, [GREEDY], 3.0, 8))
    assert torch.equal(got, expected)


def test_sampled_rows_on_the_kernels_equal_the_plain_ops(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    enc = _text(processor, PROMPTS)
    rows = [GREEDY, RowSampling(seed=8, top_k=20), RowSampling(seed=9, top_p=0.8, temperature=0.9)]
    req = _request(enc, rows, 3.0, 20)
    plain = run_steps(DgxBackend(kernels="aten"), GRAPH_SHAPED).decode(model, req)
    fused = run_steps(DgxBackend(kernels="triton"), GRAPH_SHAPED).decode(model, req)
    assert torch.equal(plain, fused)


def test_auto_uses_the_plain_ops_on_a_cpu(tiny: tuple[Any, Any]) -> None:
    model, _ = tiny
    assert DgxBackend(kernels="auto").kernels_for(model) == "aten"


def test_the_load_check_passes_on_the_real_kernels(tiny: tuple[Any, Any]) -> None:
    model, _ = tiny
    assert kernels_mismatch(fused_decoder(model_parts(model))) is None


def test_kernels_that_compute_the_wrong_thing_are_refused(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A miscompiled kernel (here: q/k/v fed the wrong input) never decodes a clip: the load check
    catches it; explicit `triton` fails with a hint, `auto` (on CUDA) warns and uses the plain ops."""
    kernels = _kernels()
    model, _ = tiny
    original = kernels.norm_qkv

    def miscompiled(x: Any, norm: Any, weight: Any, kv: Any, position: Any, tokens: int) -> Any:
        return original(x.flip(1).contiguous(), norm, weight, kv, position, tokens)  # features reversed

    monkeypatch.setattr(kernels, "norm_qkv", miscompiled)
    why = kernels_mismatch(fused_decoder(model_parts(model)))
    assert why is not None and "q/k/v queries kernel differs from the ATen ops" in why, why
    with pytest.raises(GenerationError, match="cannot run this model") as err:
        DgxBackend(kernels="triton").kernels_for(model)
    assert "kernels: aten" in str(err.value)

    # auto considers Triton on CUDA only: asked as if this CPU model were on CUDA.
    with caplog.at_level(logging.WARNING, logger="daemon.engine.decoding.step"):
        assert choose_kernels("auto", fused_decoder(model_parts(model)), cuda=True) == "aten"
    assert caplog.text.count("not the fused Triton kernels") == 1


def test_a_kernel_that_drops_its_gelu_is_caught_too(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each kernel is checked against its own ATen ops, not through the residual stream (where a
    small layer's wrong MLP would hide behind the input it is added to)."""
    kernels = _kernels()
    model, _ = tiny
    original = kernels.norm_linear

    def without_gelu(x: Any, norm: Any, weight: Any, *, gelu: bool = False) -> Any:
        return original(x, norm, weight)

    monkeypatch.setattr(kernels, "norm_linear", without_gelu)
    why = kernels_mismatch(fused_decoder(model_parts(model)))
    assert why is not None and why.startswith("the fc1 + GELU kernel differs"), why
