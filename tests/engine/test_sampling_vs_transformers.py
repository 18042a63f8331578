"""The dgx loop's sampling arithmetic against transformers' own logits processors, on the same
logits: guidance, temperature, top-k and top-p must give exactly what `generate` samples from."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    ClassifierFreeGuidanceLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from daemon.engine.decoding.api import RowSampling
from daemon.engine.decoding.sampler import (
    filtered_scores,
    guide,
    gumbel_offsets,
    pick_tokens,
    sampling_tensors,
)

B, K, V = 3, 4, 2048
CPU = torch.device("cpu")


def _logits(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((B, K, V), generator=g) * 4.0


def _hf(row: RowSampling, scores: torch.Tensor) -> torch.Tensor:
    """transformers' warpers for one row's settings, in generate's order, on [K, V] scores."""
    out = TemperatureLogitsWarper(row.temperature)(None, scores)  # type: ignore[arg-type]
    k, p = row.filters()
    if k > 0:
        out = TopKLogitsWarper(k)(None, out)  # type: ignore[arg-type]
    if p > 0:
        out = TopPLogitsWarper(p)(None, out)  # type: ignore[arg-type]
    return out


ROWS = [
    RowSampling(temperature=1.0, top_k=250, top_p=0.0),  # MusicGen's default
    RowSampling(temperature=0.7, top_k=0, top_p=0.9),
    RowSampling(temperature=1.3, top_k=17, top_p=0.0),
    RowSampling(temperature=0.5, top_k=250, top_p=0.35),  # top-p wins over top-k
    RowSampling(temperature=1.0, top_k=0, top_p=0.0),  # no filter
]


@pytest.mark.parametrize("static", [False, True], ids=["eager", "graph-shaped"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filters_equal_transformers_warpers_exactly(seed: int, static: bool) -> None:
    scores = _logits(seed)
    rows = [ROWS[(seed + i) % len(ROWS)] for i in range(B)]
    params = sampling_tensors(rows, V, CPU)
    ours = filtered_scores(scores, params, static=static)
    for i, row in enumerate(rows):
        theirs = _hf(row, scores[i])
        assert torch.equal(torch.isinf(ours[i]), torch.isinf(theirs)), f"row {i}: another set of tokens kept"
        kept = ~torch.isinf(theirs)
        assert torch.equal(ours[i][kept], theirs[kept]), f"row {i}: other values"


def test_guidance_equals_the_transformers_processor() -> None:
    cond, uncond = _logits(5), _logits(6)
    doubled = torch.cat([cond, uncond])  # generate's layout: conditional rows first
    for scale in (1.5, 3.0, 7.25):
        theirs = ClassifierFreeGuidanceLogitsProcessor(scale)(
            torch.zeros((B * K, 1), dtype=torch.long), doubled.reshape(2 * B * K, V)
        )
        assert torch.equal(guide(doubled, scale, doubled=True).reshape(B * K, V), theirs)


def test_the_sample_comes_from_the_kept_tokens_and_greedy_rows_take_the_argmax() -> None:
    scores = _logits(9)
    rows = [ROWS[2], RowSampling(greedy=True), ROWS[1]]
    params = sampling_tensors(rows, V, CPU)
    noise = gumbel_offsets(torch.rand((B, K, V), generator=torch.Generator().manual_seed(3)))
    tokens = pick_tokens(scores, params, noise)
    kept = ~torch.isinf(filtered_scores(scores, params))
    assert bool(kept.gather(-1, tokens[..., None]).all())
    assert torch.equal(tokens[1], scores[1].argmax(-1))
