"""CUDA-graph buckets for the dgx loop: static buffers and one captured decode step per shape.

A bucket is keyed by the batch padded to a power of two, the KV capacity and text length rounded
up to a multiple, guidance on/off and whether any row samples; one graph serves every request
that fits its key. The prefill runs eagerly, then each step is one graph replay that reads and
advances a device-side position. With `capture=False` the same buffers run the step eagerly (how
the graph path's logic is tested where there is no GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from daemon.engine.decoding.api import DecodeRequest, RowSampling
from daemon.engine.decoding.parts import (
    ModelParts,
    call_on_step,
    check_request,
    decode_lengths,
    delay_pattern,
    encode_text,
    extract_frames,
)
from daemon.engine.decoding.sampler import RowNoise, SamplingTensors, guide, pick_tokens, sampling_tensors
from daemon.engine.decoding.step import float_mask, fused_decoder


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def next_pow2(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


@dataclass(frozen=True)
class BucketKey:
    rows: int  # batch padded to a power of two (before CFG doubling)
    doubled: bool
    length: int  # KV capacity: delayed length rounded up
    text_length: int
    sampling: bool  # False: a greedy-only graph (no sort/top-k/top-p work)


class GraphBucket:
    """Static buffers and one captured decode step for one BucketKey."""

    def __init__(self, parts: ModelParts, key: BucketKey, capture: bool) -> None:
        self.key = key
        self.parts = parts
        dev, dt = parts.device, parts.dtype
        k, v = parts.num_codebooks, parts.vocab_size
        rows = 2 * key.rows if key.doubled else key.rows
        hidden = parts.core.config.hidden_size
        self.decoder = fused_decoder(parts)
        n_layers = len(self.decoder.layers)
        head_shape = (rows, parts.heads_count)
        # Every layer's self-attention keys/values, and the text's cross-attention keys/values.
        self.kv = torch.zeros((n_layers, 2, *head_shape, key.length, parts.head_dim), dtype=dt, device=dev)
        cross_shape = (n_layers, 2, *head_shape, key.text_length, parts.head_dim)
        self.cross = torch.zeros(cross_shape, dtype=dt, device=dev)
        self.position = torch.zeros(1, dtype=torch.long, device=dev)
        self.encoder_states = torch.zeros((rows, key.text_length, hidden), dtype=dt, device=dev)
        self.encoder_mask = torch.ones((rows, 1, 1, key.text_length), dtype=torch.bool, device=dev)
        # The float form the attention reads, converted once per decode rather than in every layer.
        self.cross_mask = torch.zeros((rows, 1, 1, key.text_length), dtype=dt, device=dev)
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
        position = self.position
        visible = (self.key_positions <= position).view(1, 1, 1, -1)
        self_mask = torch.where(visible, self.zero, self.neg)
        logits = self.decoder(self.tokens, self.kv, position, self_mask, self.cross, self.cross_mask)
        scores = guide(logits, self.cfg_coef, self.key.doubled)
        nxt = pick_tokens(
            scores, self.params, self.noise if self.key.sampling else None, static=self.key.sampling
        )
        target = position + 1
        forced = self.pattern.index_select(2, target).squeeze(-1)
        nxt = torch.where(forced == -1, nxt, forced)
        self.seq.index_copy_(2, target, nxt[:, :, None])
        fed = torch.cat([nxt, nxt]) if self.key.doubled else nxt
        self.tokens.copy_(fed[:, :, None])
        position.add_(1)

    def _capture(self) -> torch.cuda.CUDAGraph:
        if self.key.sampling:
            self.params.greedy.fill_(False)  # exercise the sampling kernels during warm-up
        stream = torch.cuda.Stream(device=self.parts.device)
        stream.wait_stream(torch.cuda.current_stream(self.parts.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: kernel selection, cuBLAS workspaces
                self._step()
        torch.cuda.current_stream(self.parts.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls from other threads (status, memory queries) during the capture
        # must not invalidate it, as the default global mode would.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._step()
        self.position.zero_()
        return graph

    def nbytes(self) -> int:
        buffers = (self.kv, self.cross, self.encoder_states)
        return sum(t.numel() * t.element_size() for t in buffers)

    def decode(self, req: DecodeRequest, noise_chunk: int, sync_every: int) -> torch.Tensor:
        parts, key = self.parts, self.key
        batch, prompt_len = check_request(parts, req)
        decoded, total_len = decode_lengths(parts, prompt_len, req.max_frames)
        states, mask_2d = encode_text(parts, req, key.doubled)
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
        self.cross_mask.copy_(float_mask(self.encoder_mask, parts.dtype))
        self.decoder.cross_kv(self.encoder_states, out=self.cross)

        prefix, pattern = delay_pattern(parts, batch, req.prompt_codes, total_len)
        start = prefix.shape[-1]
        steps = total_len - start
        self.pattern.fill_(parts.pad_id)
        self.pattern[:batch, :, :total_len] = pattern
        self.seq.copy_(self.pattern)
        self.seq[:batch, :, :start] = prefix
        padded_prefix = torch.full(
            (key.rows, parts.num_codebooks, start), parts.start_id, dtype=torch.long, device=parts.device
        )
        padded_prefix[:batch] = prefix
        rows: list[RowSampling | None] = list(req.rows) + [None] * (key.rows - batch)
        fresh = sampling_tensors(rows, parts.vocab_size, parts.device)
        copy_params(self.params, fresh)
        self.cfg_coef.fill_(float(req.cfg_coef))
        noise = RowNoise(rows, parts.num_codebooks, parts.vocab_size, parts.device, noise_chunk)

        # Prefill eagerly, reading the filled prefix only.
        fed = torch.cat([padded_prefix, padded_prefix]) if key.doubled else padded_prefix
        logits = self.decoder(fed, self.kv, 0, None, self.cross, self.cross_mask)
        scores = guide(logits, float(req.cfg_coef), key.doubled)
        first_noise = noise.step(0)
        nxt = pick_tokens(scores, fresh, first_noise)
        forced = self.pattern[:, :, start]
        nxt = torch.where(forced == -1, nxt, forced)
        self.seq[:, :, start] = nxt
        self.tokens.copy_((torch.cat([nxt, nxt]) if key.doubled else nxt)[:, :, None])
        call_on_step(req.on_step, 1, steps)

        # Then one graph replay per step; the graph reads position start .. and advances it.
        self.position.fill_(start)
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
        return extract_frames(parts, seq, prompt_len, req.max_frames)


def copy_params(dst: SamplingTensors, src: SamplingTensors) -> None:
    dst.temperature.copy_(src.temperature)
    dst.top_k.copy_(src.top_k)
    dst.top_p.copy_(src.top_p)
    dst.greedy.copy_(src.greedy)
