"""dgx-music's own MusicGen decode loop (the "dgx" decode backend).

It drives transformers' MusicGen modules and weights directly (text encoder, `enc_to_dec_proj`,
the decoder's per-codebook embeddings, its `MusicgenDecoderLayer`s and `lm_heads`) and replaces
only the machinery around them that makes `generate` slow: the text encoder runs once per call,
the KV cache is allocated once (`daemon.engine.decoding.kvcache.StaticKVCache`), the delay pattern is built once
(transformers' own `build_delay_pattern_mask`), and per-row sampling replaces the logits-processor
chain (`daemon.engine.decoding.sampler`). On CUDA one decode step, sampling included, is captured in a CUDA graph
per shape bucket (batch padded to a power of two, sequence and text length to a multiple), so a
step costs one graph launch; on CPU the same loop runs eagerly.

Equivalence with transformers (tested): greedy decoding gives the same tokens as
`MusicgenForConditionalGeneration.generate` with and without classifier-free guidance, because
the unconditional half is built exactly as transformers builds it (zeroed text states, zeroed
attention mask, projected then masked), the same attention masks are used, and the eager path
hands the attention the same shapes transformers' dynamic cache does.
"""

from __future__ import annotations

import inspect
import logging
import math
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from daemon.core.errors import GenerationError
from daemon.engine.decoding.kvcache import StaticKVCache
from daemon.engine.decoding.sampler import (
    RowNoise,
    RowParams,
    SamplingTensors,
    guide,
    pick_tokens,
    row_is_greedy,
    sampling_tensors,
)

if TYPE_CHECKING:
    from daemon.engine.decoding.tokens import DecodeRequest

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- model parts


@dataclass(frozen=True)
class _Parts:
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


def _parts(model: Any) -> _Parts:
    decoder_lm = model.decoder
    core = decoder_lm.model.decoder
    config = decoder_lm.config
    layer_params = inspect.signature(type(core.layers[0]).forward).parameters
    if "cache" not in layer_params:
        raise GenerationError(
            "the dgx decode loop needs transformers 5.x MusicGen layers (a `cache` argument)",
            hint="upgrade transformers to 5.x or set `decoder: transformers` in the config",
        )
    gen = model.generation_config
    start_id = gen.decoder_start_token_id if gen.decoder_start_token_id is not None else gen.bos_token_id
    if start_id is None:
        start_id = config.bos_token_id
    pad_id = gen.pad_token_id if gen.pad_token_id is not None else config.pad_token_id
    if isinstance(start_id, list) or isinstance(pad_id, list):
        raise GenerationError("the model's generation config has list-valued start/pad token ids")
    attn = core.layers[0].self_attn
    param = next(decoder_lm.parameters())
    return _Parts(
        model=model,
        core=core,
        heads=decoder_lm.lm_heads,
        num_codebooks=config.num_codebooks,
        channel_codebooks=config.num_codebooks // 2 if config.audio_channels == 2 else config.num_codebooks,
        vocab_size=config.vocab_size,
        start_id=int(start_id),
        pad_id=int(pad_id),
        heads_count=attn.num_heads,
        head_dim=attn.head_dim,
        device=param.device,
        dtype=param.dtype,
    )


def _check_request(parts: _Parts, req: DecodeRequest) -> tuple[int, int]:
    """Batch size and prompt length, after checking the request's shapes."""
    if req.input_ids.dim() != 2 or req.attention_mask.shape != req.input_ids.shape:
        raise ValueError(
            f"input_ids and attention_mask must both be [B, L]; got {tuple(req.input_ids.shape)} "
            f"and {tuple(req.attention_mask.shape)}"
        )
    batch = req.input_ids.shape[0]
    if len(req.rows) != batch:
        raise ValueError(f"{len(req.rows)} sampling rows for a batch of {batch}")
    if req.max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {req.max_frames}")
    prompt_len = 0
    if req.prompt_codes is not None:
        shape = tuple(req.prompt_codes.shape)
        if len(shape) != 3 or shape[0] != batch or shape[1] != parts.num_codebooks:
            raise ValueError(f"prompt_codes must be [{batch}, {parts.num_codebooks}, P]; got {shape}")
        prompt_len = shape[2]
    return batch, prompt_len


def _encode_text(parts: _Parts, req: DecodeRequest, doubled: bool) -> tuple[torch.Tensor, torch.Tensor]:
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


def _delay_pattern(
    parts: _Parts, batch: int, prompt: torch.Tensor | None, total_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefix [B, K, S0], pattern [B, K, L]) from transformers' own delay-pattern builder.

    `pattern` holds -1 where the model predicts and the forced token (pad/start or prompt code)
    elsewhere; `prefix` is what is fed before the first prediction (start token + prompt codes).
    """
    k = parts.num_codebooks
    ids = torch.full((batch * k, 1), parts.start_id, dtype=torch.long, device=parts.device)
    if prompt is not None and prompt.shape[-1] > 0:
        ids = torch.cat([ids, prompt.to(parts.device, torch.long).reshape(batch * k, -1)], dim=-1)
    prefix, pattern = parts.model.decoder.build_delay_pattern_mask(
        ids, pad_token_id=parts.start_id, max_length=total_len
    )
    return prefix.reshape(batch, k, -1), pattern.reshape(batch, k, -1)


def _extract_frames(parts: _Parts, seq: torch.Tensor, prompt_len: int, frames: int) -> torch.Tensor:
    """Undo the delay pattern the way `generate` does, then keep the `frames` new frames.

    The codes stay on the model's device, as transformers' codes do.
    """
    batch, k, _ = seq.shape
    codes = seq[seq != parts.pad_id].reshape(batch, k, -1)
    return codes[:, :, prompt_len : prompt_len + frames].contiguous()


def _forward(
    parts: _Parts,
    cache: StaticKVCache,
    tokens: torch.Tensor,
    position: int | torch.Tensor,
    encoder_states: torch.Tensor,
    encoder_mask: torch.Tensor | None,
    self_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Logits [R, K, V] for the last of `tokens` [R, K, n] fed at `position`.

    The same steps as MusicgenDecoder.forward + MusicgenForCausalLM's heads (summed codebook
    embeddings, sinusoidal positions, the layers, final norm), minus its per-call mask and
    cache building.
    """
    core = parts.core
    n = tokens.shape[-1]
    embeds = sum(core.embed_tokens[codebook](tokens[:, codebook]) for codebook in range(parts.num_codebooks))
    weights = core.embed_positions.weights
    if isinstance(position, int):
        positions = weights[position : position + n]
    else:
        positions = weights.index_select(0, position)
    hidden = embeds + positions.to(embeds.device)
    for layer in core.layers:
        hidden = layer(
            hidden,
            self_mask,
            encoder_states,
            encoder_attention_mask=encoder_mask,
            cache=cache,
            use_cache=True,
        )
    hidden = core.layer_norm(hidden[:, -1:])
    return torch.stack([head(hidden) for head in parts.heads], dim=1)[:, :, -1]


def _lengths(parts: _Parts, prompt_len: int, frames: int) -> tuple[int, int]:
    """(frames decoded, total delayed length L). generate yields L - channel_codebooks frames.

    transformers skips the delay pattern when L < 2 * channel_codebooks - 1, so very short
    requests decode a few extra frames (causal: the first ones are unchanged) and are cut.
    """
    kc = parts.channel_codebooks
    decoded = max(frames, kc - 1 - prompt_len)
    return decoded, prompt_len + decoded + kc


def _call_on_step(on_step: Callable[[int, int], None] | None, step: int, total: int) -> None:
    if on_step is not None:
        on_step(step, total)


# ---------------------------------------------------------------- eager loop (CPU, or CUDA without graphs)


def _decode_eager(parts: _Parts, req: DecodeRequest, noise_chunk: int) -> torch.Tensor:
    batch, prompt_len = _check_request(parts, req)
    doubled = req.cfg_coef is not None and req.cfg_coef > 1.0
    decoded, total_len = _lengths(parts, prompt_len, req.max_frames)
    encoder_states, mask_2d = _encode_text(parts, req, doubled)
    prefix, pattern = _delay_pattern(parts, batch, req.prompt_codes, total_len)
    start = prefix.shape[-1]
    steps = total_len - start
    rows = 2 * batch if doubled else batch

    from transformers.masking_utils import create_bidirectional_mask

    probe = torch.empty((rows, 1, parts.core.config.hidden_size), dtype=parts.dtype, device=parts.device)
    encoder_mask = create_bidirectional_mask(
        config=parts.core.config,
        inputs_embeds=probe,
        attention_mask=mask_2d,
        encoder_hidden_states=encoder_states,
    )
    if parts.core.embed_positions.weights.shape[0] < total_len:
        parts.core.embed_positions.make_weights(total_len, parts.core.embed_positions.embedding_dim)

    cache = StaticKVCache(
        num_layers=len(parts.core.layers),
        rows=rows,
        heads=parts.heads_count,
        head_dim=parts.head_dim,
        capacity=total_len,
        dtype=parts.dtype,
        device=parts.device,
    )
    params = sampling_tensors(req.rows, parts.vocab_size, parts.device)
    noise = RowNoise(req.rows, parts.num_codebooks, parts.vocab_size, parts.device, noise_chunk)
    seq = pattern.clone()
    seq[:, :, :start] = prefix
    tokens = torch.cat([prefix, prefix]) if doubled else prefix
    position = 0
    for step in range(steps):
        cache.position = position
        logits = _forward(parts, cache, tokens, position, encoder_states, encoder_mask, None)
        position += tokens.shape[-1]
        scores = guide(logits, req.cfg_coef, doubled)
        nxt = pick_tokens(scores, params, noise.step(step))
        forced = pattern[:, :, start + step]
        nxt = torch.where(forced == -1, nxt, forced)
        seq[:, :, start + step] = nxt
        tokens = nxt[:, :, None]
        if doubled:
            tokens = torch.cat([tokens, tokens])
        _call_on_step(req.on_step, step + 1, steps)
    return _extract_frames(parts, seq, prompt_len, req.max_frames)


# ---------------------------------------------------------------- CUDA graphs


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _next_pow2(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


@dataclass(frozen=True)
class BucketKey:
    rows: int  # batch padded to a power of two (before CFG doubling)
    doubled: bool
    length: int  # KV capacity: delayed length rounded up
    text_length: int
    sampling: bool  # False: a greedy-only graph (no sort/top-k/top-p work)


class _GraphBucket:
    """Static buffers and one captured decode step for one BucketKey."""

    def __init__(self, parts: _Parts, key: BucketKey, capture: bool) -> None:
        self.key = key
        self.parts = parts
        dev, dt = parts.device, parts.dtype
        k, v = parts.num_codebooks, parts.vocab_size
        rows = 2 * key.rows if key.doubled else key.rows
        hidden = parts.core.config.hidden_size
        n_layers = len(parts.core.layers)
        cross_shape = (rows, parts.heads_count, key.text_length, parts.head_dim)
        self.cache = StaticKVCache(
            num_layers=n_layers,
            rows=rows,
            heads=parts.heads_count,
            head_dim=parts.head_dim,
            capacity=key.length,
            dtype=dt,
            device=dev,
            cross_keys=[torch.zeros(cross_shape, dtype=dt, device=dev) for _ in range(n_layers)],
            cross_values=[torch.zeros(cross_shape, dtype=dt, device=dev) for _ in range(n_layers)],
        )
        self.encoder_states = torch.zeros((rows, key.text_length, hidden), dtype=dt, device=dev)
        self.encoder_mask = torch.ones((rows, 1, 1, key.text_length), dtype=torch.bool, device=dev)
        self.tokens = torch.full((rows, k, 1), parts.start_id, dtype=torch.long, device=dev)
        self.pattern = torch.full((key.rows, k, key.length), parts.pad_id, dtype=torch.long, device=dev)
        self.seq = torch.full((key.rows, k, key.length), parts.pad_id, dtype=torch.long, device=dev)
        self.cfg_coef = torch.ones((), dtype=torch.float32, device=dev)
        self.params = sampling_tensors([None] * key.rows, v, dev)
        self.noise = torch.zeros((key.rows, k, v), dtype=torch.float32, device=dev)
        self.key_positions = torch.arange(key.length, device=dev)
        self.neg = torch.tensor(torch.finfo(dt).min, dtype=dt, device=dev)
        self.zero = torch.zeros((), dtype=dt, device=dev)
        self.graph = self._capture() if capture else None

    def _step(self) -> None:
        parts, cache = self.parts, self.cache
        position = cache.position_tensor
        visible = (self.key_positions <= position).view(1, 1, 1, -1)
        self_mask = torch.where(visible, self.zero, self.neg)
        logits = _forward(
            parts, cache, self.tokens, position, self.encoder_states, self.encoder_mask, self_mask
        )
        scores = guide(logits, self.cfg_coef, self.key.doubled)
        nxt = pick_tokens(scores, self.params, self.noise if self.key.sampling else None, static=self.key.sampling)
        target = position + 1
        forced = self.pattern.index_select(2, target).squeeze(-1)
        nxt = torch.where(forced == -1, nxt, forced)
        self.seq.index_copy_(2, target, nxt[:, :, None])
        fed = torch.cat([nxt, nxt]) if self.key.doubled else nxt
        self.tokens.copy_(fed[:, :, None])
        position.add_(1)

    def _capture(self) -> torch.cuda.CUDAGraph:
        cache = self.cache
        cache.graph_mode = True
        for idx in range(len(cache.cross_attention_cache.layers)):
            cache.is_updated[idx] = True
        if self.key.sampling:
            self.params.greedy.fill_(False)  # exercise the sampling kernels during warm-up
        stream = torch.cuda.Stream(device=self.parts.device)
        stream.wait_stream(torch.cuda.current_stream(self.parts.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: kernel selection, cuBLAS workspaces
                self._step()
        torch.cuda.current_stream(self.parts.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        cache.position_tensor.zero_()
        return graph

    def nbytes(self) -> int:
        return self.cache.nbytes() + self.encoder_states.numel() * self.encoder_states.element_size()

    def decode(self, req: DecodeRequest, noise_chunk: int, sync_every: int) -> torch.Tensor:
        parts, key, cache = self.parts, self.key, self.cache
        batch, prompt_len = _check_request(parts, req)
        decoded, total_len = _lengths(parts, prompt_len, req.max_frames)
        states, mask_2d = _encode_text(parts, req, key.doubled)
        text_len = states.shape[1]

        # Text states into the static buffer: real rows first (cond, then uncond when doubled),
        # bucket-padding rows and padded text positions zero.
        self.encoder_states.zero_()
        self.encoder_mask.fill_(False)
        halves = 2 if key.doubled else 1
        for half in range(halves):
            src = slice(half * batch, (half + 1) * batch)
            dst = slice(half * key.rows, half * key.rows + batch)
            self.encoder_states[dst, :text_len] = states[src]
            self.encoder_mask[dst, 0, 0, :text_len] = mask_2d[src].bool()
        # A row with no visible text (unconditional half, padding rows) attends to one zero state:
        # the output is zero, as with a fully masked row, with no 0/0 in any attention kernel.
        empty = ~self.encoder_mask.any(dim=-1, keepdim=True)
        self.encoder_mask[..., :1] |= empty[..., :1]

        prefix, pattern = _delay_pattern(parts, batch, req.prompt_codes, total_len)
        start = prefix.shape[-1]
        steps = total_len - start
        self.pattern.fill_(parts.pad_id)
        self.pattern[:batch, :, :total_len] = pattern
        self.seq.copy_(self.pattern)
        self.seq[:batch, :, :start] = prefix
        padded_prefix = torch.full((key.rows, parts.num_codebooks, start), parts.start_id, dtype=torch.long,
                                   device=parts.device)
        padded_prefix[:batch] = prefix
        rows: list[RowParams | None] = list(req.rows) + [None] * (key.rows - batch)
        fresh = sampling_tensors(rows, parts.vocab_size, parts.device)
        _copy_params(self.params, fresh)
        self.cfg_coef.fill_(float(req.cfg_coef))
        noise = RowNoise(rows, parts.num_codebooks, parts.vocab_size, parts.device, noise_chunk)

        # Prefill eagerly (sliced cache, the text's cross-attention written into the static slots).
        cache.reset_for_decode()
        fed = torch.cat([padded_prefix, padded_prefix]) if key.doubled else padded_prefix
        logits = _forward(parts, cache, fed, 0, self.encoder_states, self.encoder_mask, None)
        scores = guide(logits, float(req.cfg_coef), key.doubled)
        first_noise = noise.step(0)
        nxt = pick_tokens(scores, fresh, first_noise)
        forced = self.pattern[:, :, start]
        nxt = torch.where(forced == -1, nxt, forced)
        self.seq[:, :, start] = nxt
        self.tokens.copy_((torch.cat([nxt, nxt]) if key.doubled else nxt)[:, :, None])
        _call_on_step(req.on_step, 1, steps)

        # Then one graph replay per step; the graph reads position start .. and advances it.
        cache.graph_mode = True
        for idx in range(len(cache.cross_attention_cache.layers)):
            cache.is_updated[idx] = True
        cache.position_tensor.fill_(start)
        for step in range(1, steps):
            step_noise = noise.step(step)
            if step_noise is not None:
                self.noise.copy_(step_noise)
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
            if req.on_step is not None:
                if self.graph is not None and (step % sync_every == 0 or step == steps - 1):
                    torch.cuda.current_stream(parts.device).synchronize()
                req.on_step(step + 1, steps)
        seq = self.seq[:batch, :, :total_len]
        return _extract_frames(parts, seq, prompt_len, req.max_frames)


def _copy_params(dst: SamplingTensors, src: SamplingTensors) -> None:
    dst.temperature.copy_(src.temperature)
    dst.top_k.copy_(src.top_k)
    dst.top_p.copy_(src.top_p)
    dst.greedy.copy_(src.greedy)


# ---------------------------------------------------------------- the backend


class DgxBackend:
    """`daemon.engine.decoding.tokens.DecodeBackend` implementation: `decode(model, req) -> codes [B, K, max_frames]`.

    Args:
        mode: "auto": CUDA graphs when the model is on CUDA, eager otherwise; "eager": never
            graphs; "graphs": CUDA graphs (the model must be on CUDA); "static": the graph path's
            bucketed static buffers with the step run without capture, on any device (lets the
            graph path's logic be tested where there is no GPU).
        length_multiple: KV capacity is rounded up to this (one graph serves many durations).
        text_multiple: text length is rounded up to this.
        max_buckets: captured buckets kept (least recently used dropped first); each holds its KV cache.
        sync_every: on CUDA, wait for the GPU every this many steps before calling `on_step`, so
            progress reports and cancellation trail the device by a bounded amount.
    """

    name = "dgx"
    # Every row draws from its own torch.Generator, so the engine may batch rows of different
    # jobs together without changing any job's audio.
    per_row_seeds = True

    def __init__(
        self,
        *,
        mode: str = "auto",
        length_multiple: int = 128,
        text_multiple: int = 16,
        max_buckets: int = 4,
        noise_chunk: int | None = None,
        sync_every: int = 8,
    ) -> None:
        from daemon.engine.decoding.sampler import NOISE_CHUNK_STEPS

        if mode not in ("auto", "eager", "graphs", "static"):
            raise ValueError(f"mode must be auto, eager, graphs or static, not {mode!r}")
        self.mode = mode
        self.length_multiple = length_multiple
        self.text_multiple = text_multiple
        self.max_buckets = max_buckets
        self.noise_chunk = noise_chunk or NOISE_CHUNK_STEPS
        self.sync_every = max(1, sync_every)
        self._buckets: OrderedDict[BucketKey, _GraphBucket] = OrderedDict()
        self._model_ref: weakref.ReferenceType[Any] | None = None

    def reset(self) -> None:
        """Drop every captured graph and its buffers (call when the model is unloaded)."""
        self._buckets.clear()
        self._model_ref = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def uses_graphs(self, model: Any) -> bool:
        """Whether decode steps of `model` are replayed from captured CUDA graphs."""
        device = next(model.decoder.parameters()).device
        if self.mode == "graphs" and device.type != "cuda":
            raise GenerationError(
                f"CUDA graphs need the model on a CUDA device, not {device}",
                hint="use decode mode auto or eager on this device",
            )
        return self.mode in ("auto", "graphs") and device.type == "cuda"

    def _uses_buckets(self, model: Any) -> bool:
        return self.mode == "static" or self.uses_graphs(model)

    def bucket_key(self, model: Any, req: DecodeRequest) -> BucketKey:
        parts = _parts(model)
        batch, prompt_len = _check_request(parts, req)
        _, total_len = _lengths(parts, prompt_len, req.max_frames)
        return BucketKey(
            rows=_next_pow2(batch),
            doubled=req.cfg_coef is not None and req.cfg_coef > 1.0,
            length=_round_up(total_len, self.length_multiple),
            text_length=_round_up(req.input_ids.shape[1], self.text_multiple),
            sampling=any(not row_is_greedy(row) for row in req.rows),
        )

    @property
    def buckets(self) -> Sequence[BucketKey]:
        return list(self._buckets)

    def decode(self, model: Any, req: DecodeRequest) -> torch.Tensor:
        with torch.inference_mode():
            parts = _parts(model)
            if not self._uses_buckets(model):
                return _decode_eager(parts, req, self.noise_chunk)
            if self._model_ref is None or self._model_ref() is not model:
                self.reset()
                self._model_ref = weakref.ref(model)
            key = self.bucket_key(model, req)
            bucket = self._buckets.get(key)
            if bucket is None:
                if parts.core.embed_positions.weights.shape[0] < key.length + 1:
                    # A new position table moves the buffer the captured graphs read: drop them.
                    self._buckets.clear()
                    parts.core.embed_positions.make_weights(key.length + 1, parts.core.embed_positions.embedding_dim)
                while len(self._buckets) >= self.max_buckets:
                    self._buckets.popitem(last=False)
                capture = self.uses_graphs(model)
                if capture:
                    log.info("capturing a CUDA graph for %s", key)
                bucket = _GraphBucket(parts, key, capture)
                self._buckets[key] = bucket
            else:
                self._buckets.move_to_end(key)
            return bucket.decode(req, self.noise_chunk, self.sync_every)
