"""The reference decode backend: Hugging Face transformers' own MusicGen `generate`.

It is what the dgx loop is tested against, and the fallback wherever that loop cannot run.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import torch

from daemon.core.errors import GenerationError
from daemon.engine.decoding.api import DecodeRequest, RowSampling, StepCallback
from daemon.engine.decoding.codec import delay_steps


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run with torch's RNG seeded to `seed`, leaving the global RNG state as it was."""
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _StepHook:
    """A stopping criterion that never stops: it reports each finished step (and may raise)."""

    def __init__(self, on_step: StepCallback, total: int) -> None:
        self.on_step, self.total, self.step = on_step, total, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.step += 1
        self.on_step(min(self.step, self.total), self.total)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@contextmanager
def _codes_instead_of_audio(model: Any) -> Iterator[list[torch.Tensor]]:
    """Take the codes `generate` hands to the codec and skip the codec.

    MusicGen's composite `generate` always ends by decoding audio; long form decodes the whole
    code sequence once at the end instead, so the per-call decode is wasted work.
    """
    captured: list[torch.Tensor] = []
    codec = model.audio_encoder

    def take(audio_codes: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        captured.append(audio_codes)
        return SimpleNamespace(
            audio_values=audio_codes.new_zeros((audio_codes.shape[1], 1, 0), dtype=torch.float32)
        )

    codec.decode = take  # instance attribute shadows the method
    try:
        yield captured
    finally:
        del codec.decode


class TransformersBackend:
    """Hugging Face `generate`. All rows of one call share a sampling config (HF has one sampler per
    call), so rows are grouped; each group is seeded with its first row's seed. Within a group, a
    row's samples therefore depend on its batch mates: exact reproduction needs the same batch."""

    name = "transformers"

    def decode(self, model: Any, req: DecodeRequest) -> torch.Tensor:
        groups: dict[tuple[float, int, float, bool], list[int]] = {}
        for i, row in enumerate(req.rows):
            groups.setdefault(row.without_seed(), []).append(i)
        per_group = max(req.max_frames, delay_steps(model)) + delay_steps(model)
        total_steps = len(groups) * per_group
        out: list[torch.Tensor] = [torch.empty(0)] * len(req.rows)
        for g, idx in enumerate(groups.values()):

            def on_step(step: int, _total: int, offset: int = g * per_group) -> None:
                if req.on_step is not None:
                    req.on_step(offset + step, total_steps)

            for i, codes in zip(idx, self._decode_group(model, req, idx, on_step)):
                out[i] = codes
        return torch.stack(out)

    def _decode_group(
        self, model: Any, req: DecodeRequest, idx: list[int], on_step: StepCallback
    ) -> torch.Tensor:
        row = req.rows[idx[0]]
        sel = torch.tensor(idx, device=req.input_ids.device)
        # transformers skips the delay pattern below K-1 frames: decode that many and cut.
        frames = max(req.max_frames, delay_steps(model))
        steps = frames + delay_steps(model)
        k = model.config.decoder.num_codebooks

        gen = _generation_config(model, row, req.cfg_coef, steps)
        kwargs: dict[str, Any] = {}
        prompt_frames = 0
        if req.prompt_codes is not None:
            prompt = req.prompt_codes.index_select(0, sel)
            prompt_frames = prompt.shape[-1]
            kwargs["decoder_input_ids"] = prompt.reshape(len(idx) * k, prompt_frames)
        features = req.extras.get("input_features")
        if features is not None:  # musicgen-melody: the chroma of the melody reference, one per row
            kwargs["input_features"] = features.index_select(0, sel)

        from transformers import StoppingCriteriaList

        hook = _StepHook(on_step, steps)
        with seeded(row.seed, sel.device), _codes_instead_of_audio(model) as captured:
            model.generate(
                input_ids=req.input_ids.index_select(0, sel),
                attention_mask=req.attention_mask.index_select(0, sel),
                generation_config=gen,
                stopping_criteria=StoppingCriteriaList([hook]),
                **kwargs,
            )
        if not captured:
            raise GenerationError(
                "transformers generate returned no audio codes (unsupported transformers version?)",
                hint="use a transformers release this daemon supports (see pyproject.toml) or decoder: dgx",
            )
        if len(captured) == 2:  # stereo: left and right halves of the interleaved codebooks
            left, right = captured[0][0], captured[1][0]
            codes = torch.stack([left, right], dim=2).reshape(left.shape[0], k, left.shape[-1])
        else:
            codes = captured[0][0]
        want = prompt_frames + frames
        if codes.shape[-1] != want or codes.shape[1] != k:
            raise GenerationError(
                f"transformers generate produced codes of shape {tuple(codes.shape)}, "
                f"expected [.., {k}, {want}]",
                hint="this transformers version changed MusicGen's delay pattern; "
                "pin transformers or use decoder: dgx",
            )
        return codes[..., prompt_frames : prompt_frames + req.max_frames].long()


def _generation_config(model: Any, row: RowSampling, cfg_coef: float, steps: int) -> Any:
    """The checkpoint's generation config with this row's sampling and guidance, `steps` long."""
    gen = copy.deepcopy(model.generation_config)
    gen.max_length, gen.max_new_tokens, gen.min_new_tokens, gen.do_sample = None, steps, None, not row.greedy
    top_k, top_p = row.filters()
    # generate fills None fields from the checkpoint's generation_config (top_k=250 on the hub),
    # so "off" must be spelled out: top_k=0 and top_p=1.0 add no filter.
    if row.greedy:
        # Ignored by greedy search; these are the values transformers does not warn about.
        gen.temperature, gen.top_k, gen.top_p = 1.0, 50, 1.0
    else:
        gen.temperature, gen.top_k, gen.top_p = row.temperature, top_k, top_p if top_p > 0 else 1.0
    # None would be filled back from the checkpoint's generation_config (3.0): say 1.0 (off).
    gen.guidance_scale = cfg_coef if cfg_coef > 1.0 else 1.0
    return gen
