"""The fused step's matmul kernels: oneDNN-packed weights on the CPU give `mm`'s numbers (bit for bit
in bfloat16, to rounding in float32) and the same tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from daemon.engine.decoding.api import DecodeRequest, RowSampling
from daemon.engine.decoding.dgx import DgxBackend
from daemon.engine.decoding.linear import Linear, available_memory, packing_wanted
from daemon.engine.decoding.parts import model_parts
from daemon.engine.decoding.step import fused_decoder

CPU = torch.device("cpu")
needs_packing = pytest.mark.skipif(
    not packing_wanted(CPU, torch.float32), reason="needs a CPU build of torch with oneDNN packing"
)


def _packs(dtype: torch.dtype) -> bool:
    # oneDNN packs bfloat16 only on CPUs with AVX512 (bw, vl, dq) or AVX-NE-CONVERT; elsewhere the
    # product keeps plain matmuls (`_pack` refuses), so a test of the packed form has nothing to test.
    return Linear(torch.ones(8, 8, dtype=dtype), pack=True).packed is not None


DTYPES = [
    pytest.param(
        dtype,
        marks=pytest.mark.skipif(
            not _packs(dtype), reason=f"needs a CPU with oneDNN packing in {str(dtype)[6:]}"
        ),
    )
    for dtype in (torch.float32, torch.bfloat16)
]


def test_packing_is_only_wanted_on_the_cpu_in_float32_and_bfloat16() -> None:
    assert not packing_wanted(CPU, torch.float16)
    assert not packing_wanted(torch.device("cuda"), torch.bfloat16)


@needs_packing
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 4, 16])
def test_packed_matmuls_equal_mm_and_addmm(rows: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 64, generator=gen).to(dtype)
    x = torch.randn(rows, 64, generator=gen).to(dtype)
    residual = torch.randn(rows, 96, generator=gen).to(dtype)
    packed, plain = Linear(weight, pack=True), Linear(weight, pack=False)
    assert packed.packed is not None and plain.packed is None
    for got, expected in ((packed.mm(x), plain.mm(x)), (packed.addmm(residual, x), plain.addmm(residual, x))):
        if dtype == torch.bfloat16:
            assert torch.equal(got, expected)
        else:
            torch.testing.assert_close(got, expected)


@needs_packing
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_cpu_decode_uses_packed_weights_and_gives_the_same_tokens(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir).eval().to(dtype)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    enc = processor(text=["dark techno", "warm lofi beat with piano"], padding=True, return_tensors="pt")

    def decode() -> Any:
        rows = [RowSampling(seed=7), RowSampling(greedy=True)]
        req = DecodeRequest(enc["input_ids"], enc["attention_mask"], rows, cfg_coef=3.0, max_frames=24)
        return DgxBackend().decode(model, req)

    with_packing = decode()
    assert all(layer.fc1.packed is not None for layer in fused_decoder(model_parts(model)).layers)
    monkeypatch.setattr("daemon.engine.decoding.step.packing_wanted", lambda *_: False)
    object.__setattr__(model, "_dgx_fused_decoder", None)  # rebuild the step without packing
    without = decode()
    assert fused_decoder(model_parts(model)).layers[0].fc1.packed is None
    assert torch.equal(with_packing, without)


@needs_packing
def test_no_packing_when_the_second_copy_would_not_fit() -> None:
    free = available_memory()
    assert free is not None and free > 0  # Linux: /proc/meminfo
    assert packing_wanted(CPU, torch.float32, free // 4)
    assert not packing_wanted(CPU, torch.float32, free)
