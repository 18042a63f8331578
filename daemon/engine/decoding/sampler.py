"""Per-row token choice for MusicGen decoding: guidance, temperature, top-k, top-p, seeded sampling.

The logits processing follows transformers' `generate` for MusicGen, in its order: classifier-free
guidance (`uncond + (cond - uncond) * scale` on float32 logits), then temperature, top-k, top-p;
greedy rows take the argmax of the guided logits (transformers applies no warper when not
sampling). Which filters a row uses, and when a row is greedy, is the one rule of
`daemon.engine.decoding.api.RowSampling` (`filters`, `is_greedy`): top-p when `top_p > 0`, else
top-k when `top_k > 0`. Every row carries its own parameters, so jobs with different settings
share a batch.

Randomness: each sampling row has its own `torch.Generator` seeded from its job, and draws uniform
noise from it in fixed-size chunks whatever the batch; the token is the Gumbel-max of the filtered
logits and that noise (an exact sample from the softmax), the noise turned into its Gumbel offsets
(`gumbel_offsets`) once per chunk, when drawn, not in every step. A row's tokens therefore depend
only on its seed and its logits, never on its batch neighbours or the global RNG, and the same
arithmetic runs inside a CUDA graph (the noise is written into a static buffer before each replay).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from daemon.engine.decoding.api import RowSampling

# Noise is drawn this many steps at a time per row. A constant, because Philox streams drawn in
# differently sized pieces differ: changing it changes every seeded output.
NOISE_CHUNK_STEPS = 64


@dataclass
class SamplingTensors:
    """Per-row parameters as tensors on the decode device ([rows] each)."""

    temperature: torch.Tensor  # float32; 1.0 for greedy rows
    top_k: torch.Tensor  # int64 in 1..vocab; vocab means "off"
    top_p: torch.Tensor  # float32 in (0, 1]; 1.0 means "off"
    greedy: torch.Tensor  # bool
    kth_index: torch.Tensor  # int64: vocab - top_k, top-k's threshold in ascending order
    top_p_drop: torch.Tensor  # float32: 1 - top_p, the mass top-p removes from the bottom
    any_sampling: bool
    any_top_k: bool
    any_top_p: bool


def sampling_tensors(
    rows: Sequence[RowSampling | None], vocab_size: int, device: torch.device
) -> SamplingTensors:
    """Tensors for `rows`; a None row (bucket padding) decodes greedily and is thrown away."""
    temperature: list[float] = []
    top_k: list[int] = []
    top_p: list[float] = []
    greedy: list[bool] = []
    for row in rows:
        if row is None or row.is_greedy:
            temperature.append(1.0)
            top_k.append(vocab_size)
            top_p.append(1.0)
            greedy.append(True)
            continue
        k, p = row.filters()
        temperature.append(float(row.temperature))
        top_k.append(vocab_size if k <= 0 else min(k, vocab_size))
        top_p.append(p if 0.0 < p < 1.0 else 1.0)
        greedy.append(False)
    k_tensor = torch.tensor(top_k, dtype=torch.long, device=device)
    p_tensor = torch.tensor(top_p, dtype=torch.float32, device=device)
    return SamplingTensors(
        temperature=torch.tensor(temperature, dtype=torch.float32, device=device),
        top_k=k_tensor,
        top_p=p_tensor,
        greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
        # Per call, not per step: derived once here, with the same float32 arithmetic.
        kth_index=vocab_size - k_tensor,
        top_p_drop=1.0 - p_tensor,
        any_sampling=not all(greedy),
        any_top_k=any(k < vocab_size for k, g in zip(top_k, greedy) if not g),
        any_top_p=any(p < 1.0 for p, g in zip(top_p, greedy) if not g),
    )


def guide(logits: torch.Tensor, cfg_coef: float | torch.Tensor, doubled: bool) -> torch.Tensor:
    """Float32 scores [B, K, V] from the model's logits ([2B, K, V] when the batch is doubled for CFG)."""
    scores = logits.float()
    if not doubled:
        return scores
    half = scores.shape[0] // 2
    cond, uncond = scores[:half], scores[half:]
    # Same expression as transformers' ClassifierFreeGuidanceLogitsProcessor.
    return uncond + (cond - uncond) * cfg_coef


def pick_tokens(
    scores: torch.Tensor,
    params: SamplingTensors,
    noise: torch.Tensor | None,
    *,
    static: bool = False,
) -> torch.Tensor:
    """Next tokens [B, K] from guided scores [B, K, V].

    `noise`: the Gumbel offsets of uniform draws [B, K, V] (`gumbel_offsets`; None only when every
    row is greedy). `static=True` runs every stage whatever the rows ask (for a captured graph,
    whose shape of work is fixed); the result is the same, as the stages are exact no-ops for rows
    that do not use them.
    """
    greedy_tokens = scores.argmax(dim=-1)
    if not static and not params.any_sampling:
        return greedy_tokens
    if noise is None:
        raise ValueError("sampling rows need noise")
    sampled = (filtered_scores(scores, params, static=static) - noise).argmax(dim=-1)
    return torch.where(params.greedy[:, None], greedy_tokens, sampled)


def gumbel_offsets(uniform: torch.Tensor) -> torch.Tensor:
    """log(-log(u)) of uniform draws: the Gumbel-max token is argmax(scores - this)."""
    u = uniform.clamp(min=torch.finfo(uniform.dtype).tiny)
    return torch.log(-torch.log(u))


def filtered_scores(scores: torch.Tensor, params: SamplingTensors, *, static: bool = False) -> torch.Tensor:
    """Guided scores [B, K, V] after temperature, top-k and top-p: what transformers' warpers give
    (filtered tokens at -inf); the sample is the Gumbel-max of these. Filters write in place into
    the tempered copy and the per-call constants are precomputed (`SamplingTensors`): a captured
    step launches one kernel per stage, no hidden clones."""
    x = scores / params.temperature[:, None, None]
    batch, codebooks, vocab = x.shape
    use_k = static or params.any_top_k
    use_p = static or params.any_top_p
    if use_k or use_p:
        # One ascending sort serves both filters. A row uses at most one of them (`RowSampling.filters`)
        # and the other is an exact no-op for it, so both may read the unfiltered order: top-k's
        # threshold is the element `vocab - k` places up, top-p is transformers' arithmetic as is.
        sorted_x, sorted_idx = x.sort(dim=-1)
    if use_k:
        kth_index = params.kth_index.view(batch, 1, 1).expand(batch, codebooks, 1)
        kth = sorted_x.gather(-1, kth_index)
        x.masked_fill_(x < kth, float("-inf"))
    if use_p:
        cumulative = sorted_x.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= params.top_p_drop.view(batch, 1, 1)
        remove_sorted[..., -1] = False  # keep at least one token, as transformers does
        # sorted_idx is a permutation: every position of `remove` is written.
        remove = torch.empty_like(remove_sorted).scatter_(-1, sorted_idx, remove_sorted)
        x.masked_fill_(remove, float("-inf"))
    return x


class RowNoise:
    """Noise per row and step, from one generator per sampling row: uniform draws, handed out as
    their Gumbel offsets (`gumbel_offsets`, computed per chunk of draws).

    `step(i)` returns a [rows, K, V] float32 tensor (rows that do not sample get zeros). Steps must
    be asked in order 0, 1, 2, ...
    """

    def __init__(
        self,
        rows: Sequence[RowSampling | None],
        codebooks: int,
        vocab_size: int,
        device: torch.device,
        chunk_steps: int = NOISE_CHUNK_STEPS,
    ) -> None:
        self._chunk = chunk_steps
        self._device = device
        self._generators: list[tuple[int, torch.Generator]] = []
        for index, row in enumerate(rows):
            if row is None or row.is_greedy:
                continue
            generator = torch.Generator(device=device)
            generator.manual_seed(int(row.seed) & 0xFFFF_FFFF_FFFF_FFFF)
            self._generators.append((index, generator))
        self._buffer = (
            torch.zeros((chunk_steps, len(rows), codebooks, vocab_size), dtype=torch.float32, device=device)
            if self._generators
            else None
        )
        self._next_step = 0

    def step(self, index: int) -> torch.Tensor | None:
        if self._buffer is None:
            return None
        if index != self._next_step:
            raise ValueError(f"noise asked for step {index}, expected {self._next_step}")
        self._next_step += 1
        offset = index % self._chunk
        if offset == 0:
            shape = self._buffer.shape[0:1] + self._buffer.shape[2:]
            for row, generator in self._generators:
                draws = torch.rand(shape, generator=generator, device=self._device)
                self._buffer[:, row] = gumbel_offsets(draws)
        return self._buffer[offset]
