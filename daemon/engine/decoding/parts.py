"""The pieces of a MusicGen model the dgx loop drives, and the steps the eager and graph paths share.

Everything here mirrors what transformers' MusicGen does inside `generate` (text encoding with the
unconditional half, the delay pattern, undoing the pattern), so the loops in `dgx` and `graphs`
give the same tokens; the decoder step itself is `step.FusedDecoder`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from daemon.core.errors import GenerationError
from daemon.engine.decoding.api import DecodeRequest, RowSampling
from daemon.engine.decoding.codec import channel_codebooks


@dataclass(frozen=True)
class ModelParts:
    """The pieces of a MusicgenForConditionalGeneration the loop calls, and its token ids."""

    model: Any
    core: Any  # MusicgenDecoder: embed_tokens, embed_positions, layers, layer_norm
    heads: Any  # ModuleList of per-codebook lm heads
    num_codebooks: int
    channel_codebooks: int  # codebooks per audio channel: the delay pattern's depth
    vocab_size: int
    start_id: int
    pad_id: int
    heads_count: int
    head_dim: int
    device: torch.device
    dtype: torch.dtype


def model_parts(model: Any) -> ModelParts:
    decoder_lm = model.decoder
    core = decoder_lm.model.decoder
    config = decoder_lm.config
    # The step (`step.FusedDecoder`) reads the layers' weights, never calls their forward, so the
    # layer's cache keyword (`past_key_values` in 5.17, `cache` later) does not matter here.
    if not hasattr(core.layers[0], "encoder_attn"):
        raise GenerationError(
            "the dgx decode loop needs MusicGen decoder layers with cross-attention",
            hint="set `decoder: transformers` in the config",
        )
    gen = model.generation_config
    starts = (gen.decoder_start_token_id, gen.bos_token_id)
    start_id = next((i for i in starts if i is not None), config.bos_token_id)
    pad_id = gen.pad_token_id if gen.pad_token_id is not None else config.pad_token_id
    if isinstance(start_id, list) or isinstance(pad_id, list):
        raise GenerationError("the model's generation config has list-valued start/pad token ids")
    attn = core.layers[0].self_attn
    param = next(decoder_lm.parameters())
    return ModelParts(
        model=model,
        core=core,
        heads=decoder_lm.lm_heads,
        num_codebooks=config.num_codebooks,
        channel_codebooks=channel_codebooks(model),
        vocab_size=config.vocab_size,
        start_id=int(start_id),
        pad_id=int(pad_id),
        heads_count=attn.num_heads,
        head_dim=attn.head_dim,
        device=param.device,
        dtype=param.dtype,
    )


def prompt_length(parts: ModelParts, req: DecodeRequest) -> int:
    """Frames of `req.prompt_codes` (0: none), which must be [B, K, P] for the model's K codebooks."""
    if req.prompt_codes is None:
        return 0
    shape = tuple(req.prompt_codes.shape)
    if len(shape) != 3 or shape[1] != parts.num_codebooks:
        raise ValueError(f"prompt_codes must be [B, {parts.num_codebooks}, P]; got {shape}")
    return shape[2]


def encode_text(parts: ModelParts, req: DecodeRequest, doubled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder states for cross-attention and their 2D mask, built as transformers builds them."""
    model = parts.model
    ids = req.input_ids.to(parts.device)
    mask = req.attention_mask.to(parts.device)
    states = model.text_encoder(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
    if doubled:
        # The unconditional half: zero text states and a zero mask (generate's
        # _prepare_text_encoder_kwargs_for_generation), projected and masked like the conditional half.
        states = torch.concatenate([states, torch.zeros_like(states)], dim=0)
        mask = torch.concatenate([mask, torch.zeros_like(mask)], dim=0)
    if (
        model.text_encoder.config.hidden_size != model.decoder.config.hidden_size
        and model.decoder.config.cross_attention_hidden_size is None
    ):
        states = model.enc_to_dec_proj(states)
    states = states * mask[..., None]
    return states, mask


def delay_pattern(
    parts: ModelParts, batch: int, prompt: torch.Tensor | None, total_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefix [B, K, S0], pattern [B, K, L]) from transformers' own delay-pattern builder.

    `pattern` holds -1 where the model predicts and the forced token (pad/start or prompt code)
    elsewhere; `prefix` is what is fed before the first prediction (start token + prompt codes).
    """
    k = parts.num_codebooks
    # Built on the CPU and copied once: transformers' builder takes Python min() over its input,
    # one host read per element were the tensor on a GPU.
    cpu = torch.device("cpu")
    ids = torch.full((batch * k, 1), parts.start_id, dtype=torch.long, device=cpu)
    if prompt is not None and prompt.shape[-1] > 0:
        ids = torch.cat([ids, prompt.to(cpu, torch.long).reshape(batch * k, -1)], dim=-1)
    prefix, pattern = parts.model.decoder.build_delay_pattern_mask(
        ids, pad_token_id=parts.start_id, max_length=total_len
    )
    both = torch.cat([prefix.reshape(batch, k, -1), pattern.reshape(batch, k, -1)], dim=-1).to(parts.device)
    return both[..., : prefix.shape[-1]], both[..., prefix.shape[-1] :]


def extract_frames(parts: ModelParts, seq: torch.Tensor, prompt_len: int, frames: int) -> torch.Tensor:
    """Undo the delay pattern the way `generate` does, then keep the `frames` new frames.

    The codes stay on the model's device, as transformers' codes do.
    """
    batch, k, _ = seq.shape
    codes = seq[seq != parts.pad_id].reshape(batch, k, -1)
    return codes[:, :, prompt_len : prompt_len + frames].contiguous()


def decode_lengths(parts: ModelParts, prompt_len: int, frames: int) -> tuple[int, int]:
    """(frames decoded, total delayed length L). generate yields L - channel_codebooks frames.

    transformers skips the delay pattern when L < 2 * channel_codebooks - 1, so very short
    requests decode a few extra frames (causal: the first ones are unchanged) and are cut.
    """
    kc = parts.channel_codebooks
    decoded = max(frames, kc - 1 - prompt_len)
    return decoded, prompt_len + decoded + kc


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def text_length_calls(req: DecodeRequest, multiple: int, rows: int | None) -> list[tuple[int, list[int]]]:
    """The request's rows grouped by their own text length rounded up to `multiple`, as
    (text length, row indices) calls of at most `rows` rows each (None: a group per call)."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(req.attention_mask.sum(dim=1).tolist()):
        length = max(1, int(n))
        groups.setdefault(round_up(length, multiple), []).append(i)
    calls = []
    for text_len, idx in groups.items():
        per_call = rows or len(idx)
        calls += [(text_len, idx[k : k + per_call]) for k in range(0, len(idx), per_call)]
    return calls


def fixed_request(
    parts: ModelParts, req: DecodeRequest, idx: list[int], rows: int, text_len: int, call: int, calls: int
) -> DecodeRequest:
    """Rows `idx` of `req` as a request of exactly `rows` rows and `text_len` text tokens.

    Each row's own tokens come first (the mask picks them, so left or right padding alike), then
    text padding; the rows after `idx` are greedy padding whose output is thrown away. Progress
    of call `call` of `calls` is reported as its share of the whole request.
    """
    n = len(idx)
    pad_id = parts.model.text_encoder.config.pad_token_id
    ids = torch.full((rows, text_len), 0 if pad_id is None else int(pad_id), dtype=torch.long)
    mask = torch.zeros((rows, text_len), dtype=torch.long)
    src_ids, src_mask = req.input_ids.cpu(), req.attention_mask.cpu().bool()
    for r, i in enumerate(idx):
        own = src_ids[i][src_mask[i]]
        if own.numel() == 0:  # no text at all: one pad token, as a padding row gets
            own = ids[r, :1]
        ids[r, : own.numel()] = own
        mask[r, : own.numel()] = 1
    mask[n:, 0] = 1  # padding rows see one pad token: no fully masked row in the text encoder
    prompt = None
    if req.prompt_codes is not None:
        chosen = req.prompt_codes[torch.tensor(idx, device=req.prompt_codes.device)]
        prompt = torch.zeros((rows, *chosen.shape[1:]), dtype=chosen.dtype, device=chosen.device)
        prompt[:n] = chosen
    on_step = req.on_step
    if on_step is not None and calls > 1:
        outer = on_step

        def on_step(step: int, total: int) -> None:
            outer(call * total + step, calls * total)

    return replace(
        req,
        input_ids=ids.to(req.input_ids.device),
        attention_mask=mask.to(req.attention_mask.device),
        rows=[req.rows[i] for i in idx] + [RowSampling(greedy=True)] * (rows - n),
        prompt_codes=prompt,
        on_step=on_step,
    )
