"""What production runs, at the size it runs: graphs + the Triton kernels in bf16 at the musicgen-small
shape (24 layers, width 1024, FFN 4096), against the plain ATen step and transformers `generate`.

The weights are random (no download): a broken kernel is caught whatever the weights, as its tokens
then agree with the reference's by chance only (1 in 2048). bf16 rounds differently in each path, and
one near-tie flipped early changes every later frame of that row, so the agreement asked for is a
fraction of the first FRAMES frames, not equality.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from daemon.engine.decoding.api import DecodeRequest, RowSampling
from daemon.engine.decoding.dgx import DgxBackend
from tests.engine.test_fastdecode import hf_greedy_codes

pytestmark = pytest.mark.gpu

PROMPTS = [
    "warm lofi hip hop beat with dusty piano",
    "dark techno",
    "calm ambient pad with soft strings",
    "jazz trio, brushed snare, upright bass, late night",
]
FRAMES = 32
# The fraction of (row, codebook, frame) tokens over the first FRAMES frames that must agree. A
# kernel that stops after its first K block, drops a column block or its GELU agrees on ~0.
AGREEMENT = 0.6


@pytest.fixture(scope="module")
def small_bf16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    from daemon.ops.tinymodel import init_random

    directory = init_random(tmp_path_factory.mktemp("small") / "small", "small", seed=3)
    model = MusicgenForConditionalGeneration.from_pretrained(directory).to("cuda", torch.bfloat16).eval()
    model.audio_encoder.float()
    return model, AutoProcessor.from_pretrained(directory)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a[..., :FRAMES] == b[..., :FRAMES]).float().mean().item()


@pytest.mark.parametrize("cfg_coef", [1.0, 3.0])
def test_graphs_on_the_triton_kernels_agree_with_aten_and_generate_at_the_small_shape(
    small_bf16: tuple[Any, Any], cfg_coef: float
) -> None:
    model, processor = small_bf16
    cfg = model.config.decoder
    # K = 1024 and 4096: 16 and 64 of the GPU's 64-deep K blocks per matmul.
    assert (cfg.hidden_size, cfg.ffn_dim, cfg.num_hidden_layers) == (1024, 4096, 24)
    enc = processor(text=PROMPTS, padding=True, return_tensors="pt").to("cuda")

    def decode(kernels: str) -> torch.Tensor:
        backend = DgxBackend(kernels=kernels, batch_invariant="off")
        req = DecodeRequest(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            rows=[RowSampling(greedy=True)] * len(PROMPTS),
            cfg_coef=cfg_coef,
            max_frames=FRAMES,
        )
        codes = backend.decode(model, req)
        assert backend.kernels_for(model) == kernels and backend.uses_graphs(model)
        return codes

    triton = decode("triton")
    aten = decode("aten")
    reference = hf_greedy_codes(model, enc, cfg_coef, FRAMES).to(triton.device)
    figures = {
        "triton_vs_aten": _agreement(triton, aten),
        "triton_vs_generate": _agreement(triton, reference),
        "aten_vs_generate": _agreement(aten, reference),
    }
    print(f"musicgen-small bf16, cfg {cfg_coef}, first {FRAMES} frames agree: {figures}")
    assert figures["triton_vs_aten"] >= AGREEMENT, figures
    assert figures["triton_vs_generate"] >= AGREEMENT, figures
