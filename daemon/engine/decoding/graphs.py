"""The dgx loop: static buffers per shape bucket and one decode step, captured in CUDA graphs on a GPU.

A bucket (`BucketKey`: rows padded, KV capacity and text length rounded up, guidance on/off, any
row sampling) serves every request that fits it. The prefill runs eagerly; each later step is one
graph replay that reads and advances a device-side position. Self-attention reads the live length
rounded up to `attention_chunk`: one graph per chunk, the graph for chunk c attending over
kv[..., :(c + 1) * chunk] with a float mask hiding the unwritten positions; the graphs share the
static buffers and one memory pool. Uncaptured (a CPU, a failed capture) the host passes the
position and the attention reads exactly the filled prefix; the tests' graph-shaped path
(`testseam`) runs the chunked slices uncaptured.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from daemon.engine.decoding.api import DecodeRequest, RowSampling
from daemon.engine.decoding.parts import (
    ModelParts,
    decode_lengths,
    delay_pattern,
    encode_text,
    extract_frames,
    prompt_length,
)
from daemon.engine.decoding.sampler import RowNoise, SamplingTensors, guide, pick_tokens, sampling_tensors
from daemon.engine.decoding.step import float_mask, fused_decoder

log = logging.getLogger(__name__)

# Positions per self-attention chunk (one graph each): a step reads at most this many positions
# past the live length, and a bucket of capacity C holds ceil(C / chunk) graphs.
ATTENTION_CHUNK = 128
# Captured steps: wait for the GPU every this many before reporting progress.
SYNC_EVERY = 8
# Rows x positions the prefill feeds at once: a continuation window's 12 s prefix at 16 rows is
# about 9,600 (a few hundred MiB of passing activations at the small shape), a first window's 1.
# A piece's activations come on top of the whole window's key/value cache, and only windows past
# the first have a prefix: at 2048 a continuation window peaked 77 MiB above a first window
# (musicgen-small's widths, 2 layers, 16 rows), at 512 34 MiB, for 19 pieces instead of 5.
PREFILL_TOKENS = 512


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
    """Static buffers and one captured decode step per attention chunk for one BucketKey.

    `replays` counts graph replays over the bucket's life (0 when it runs uncaptured);
    `capture_s` is the time its captures took.
    """

    def __init__(
        self,
        parts: ModelParts,
        key: BucketKey,
        capture: bool,
        attention_chunk: int = ATTENTION_CHUNK,
        *,
        host_steps: bool = False,
    ) -> None:
        self.key = key
        self.host_steps = host_steps and not capture
        self.parts = parts
        self.chunk = max(1, min(int(attention_chunk), key.length))
        # The end of each chunk's key slice; the last one is the capacity.
        chunks = math.ceil(key.length / self.chunk)
        self.ends = [min(key.length, (i + 1) * self.chunk) for i in range(chunks)]
        dev, dt = parts.device, parts.dtype
        k, v = parts.num_codebooks, parts.vocab_size
        rows = 2 * key.rows if key.doubled else key.rows
        hidden = parts.core.config.hidden_size
        self.decoder = fused_decoder(parts)
        # The kernels the bucket's steps were built (and captured) on; its eager prefill uses them too.
        self.kernels = self.decoder.kernels
        n_layers = len(self.decoder.layers)
        head_shape = (rows, parts.heads_count)
        # Every layer's self-attention keys/values, and the text's cross-attention keys/values.
        kv_dtype = self.decoder.kv_dtype
        self.kv = torch.zeros(
            (n_layers, 2, *head_shape, key.length, parts.head_dim), dtype=kv_dtype, device=dev
        )
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
        self.call_params = self.params
        self.noise = torch.zeros((key.rows, k, v), dtype=torch.float32, device=dev)
        self.key_positions = torch.arange(key.length, device=dev)
        # The self-attention mask's values, in the attention's dtype.
        self.neg = torch.tensor(torch.finfo(kv_dtype).min, dtype=kv_dtype, device=dev)
        self.zero = torch.zeros((), dtype=kv_dtype, device=dev)
        self.replays = 0
        self.capture_s = 0.0
        self.pool_bytes = 0  # the graphs' memory pool, measured at capture
        self.graphs: list[torch.cuda.CUDAGraph] = self._capture() if capture else []

    def _step(
        self, end: int | None = None, host: int | None = None, noise: torch.Tensor | None = None
    ) -> None:
        """One decode step. As captured: the position on the device, the attention over
        kv[..., :end] (a view of the static cache, so every chunk's graph reads the same memory)
        with the positions past it masked. With `host` (uncaptured, the position known on the
        host): the attention reads exactly the filled prefix, as transformers' dynamic cache gives
        it, needs no mask, and takes the step's `noise` as it is (no static shapes to keep)."""
        if host is not None:
            position: int | torch.Tensor = host
            kv, self_mask = self.kv, None
        else:
            end = self.key.length if end is None else end
            position, kv = self.position, self.kv[:, :, :, :, :end]
            visible = (self.key_positions[:end] <= self.position).view(1, 1, 1, -1)
            self_mask = torch.where(visible, self.zero, self.neg)
        logits = self.decoder(self.tokens, kv, position, self_mask, self.cross, self.cross_mask)
        if host is not None:  # the call's own sampling tensors: they know which stages its rows use
            target = self.key_positions[host + 1 : host + 2]
            self._advance(logits, self.cfg_coef, self.call_params, noise, target)
            return
        # Advanced before the tail, which writes at the new position: one kernel, no `position + 1`.
        self.position.add_(1)
        noise = self.noise if self.key.sampling else None
        self._advance(logits, self.cfg_coef, self.params, noise, self.position, static=self.key.sampling)

    def _prefill(self, fed: torch.Tensor) -> torch.Tensor:
        """Logits after feeding `fed` [R, K, n] from position 0. A long prefix (a continuation
        window's) goes in pieces of PREFILL_TOKENS rows x positions, each attending to the cache
        so far under an explicit causal mask: its passing activations are a piece's, not the whole
        prefix's, so a job past one window needs no more memory than a job of one window."""
        rows, _, n = fed.shape
        piece = max(1, PREFILL_TOKENS // rows)
        if n <= piece:
            return self.decoder(fed, self.kv, 0, None, self.cross, self.cross_mask)
        for start in range(0, n, piece):
            stop = min(n, start + piece)
            queries = torch.arange(start, stop, device=fed.device).view(-1, 1)
            visible = self.key_positions[:stop].view(1, -1) <= queries
            mask = torch.where(visible, self.zero, self.neg).view(1, 1, stop - start, stop)
            logits = self.decoder(fed[..., start:stop], self.kv, start, mask, self.cross, self.cross_mask)
        return logits

    def _advance(
        self,
        logits: torch.Tensor,
        cfg_coef: float | torch.Tensor,
        params: SamplingTensors,
        noise: torch.Tensor | None,
        target: torch.Tensor,
        *,
        static: bool = False,
    ) -> None:
        """The step's tail, for the prefill and every later step alike: guide -> pick -> force (the
        delay pattern's fixed tokens at `target`) -> write into the sequence -> feed the next step."""
        nxt = pick_tokens(guide(logits, cfg_coef, self.key.doubled), params, noise, static=static)
        forced = self.pattern.index_select(2, target).squeeze(-1)
        nxt = torch.where(forced == -1, nxt, forced)
        self.seq.index_copy_(2, target, nxt[:, :, None])
        # Both halves of a guided batch in one broadcast copy.
        self.tokens.view(-1, *nxt.shape).copy_(nxt)

    def _capture(self) -> list[torch.cuda.CUDAGraph]:
        t0 = time.monotonic()
        dev = self.parts.device
        if self.key.sampling:
            self.params.greedy.fill_(False)  # exercise the sampling kernels during warm-up
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            # Warm-up: kernel selection per slice length, cuBLAS workspaces (three runs of the first).
            for index, end in enumerate(self.ends):
                for _ in range(3 if index == 0 else 1):
                    self.position.zero_()  # the step advances it: stay inside the capacity
                    self._step(end)
        torch.cuda.current_stream(dev).wait_stream(stream)
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()  # so that the growth measured below is the graphs' pool alone
        reserved = torch.cuda.memory_reserved(dev)
        pool = torch.cuda.graph_pool_handle()
        graphs = []
        for end in self.ends:
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls from other threads (status, memory queries) during the capture
            # must not invalidate it, as the default global mode would.
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                self._step(end)
            graphs.append(graph)
        self.position.zero_()
        self.pool_bytes = max(0, torch.cuda.memory_reserved(dev) - reserved)
        self.capture_s = time.monotonic() - t0
        log.info(
            "captured %d CUDA graphs (attention chunks of %d) for %s in %.2f s: buffers %.0f MiB, "
            "graph pool %.0f MiB",
            *(len(graphs), self.chunk, self.key, self.capture_s),
            *(self.buffer_bytes() / 2**20, self.pool_bytes / 2**20),
        )
        return graphs

    def buffer_bytes(self) -> int:
        """The static buffers' bytes (KV cache, text states, tokens, sampling state)."""
        buffers = (self.kv, self.cross, self.encoder_states, self.encoder_mask, self.cross_mask, self.tokens)
        buffers += (self.pattern, self.seq, self.noise, self.key_positions)
        return sum(t.numel() * t.element_size() for t in buffers)

    def nbytes(self) -> int:
        """Device memory the bucket holds: its static buffers and its graphs' memory pool."""
        return self.buffer_bytes() + self.pool_bytes

    def _load_text(self, req: DecodeRequest, batch: int) -> None:
        """The text's states and mask into the static buffers (one text mask, for every path)."""
        parts, key = self.parts, self.key
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
        self.decoder.cross_kv(self.encoder_states, self.cross)

    def decode(self, req: DecodeRequest) -> torch.Tensor:
        parts, key = self.parts, self.key
        self.decoder.use_kernels(self.kernels)
        batch, prompt_len = len(req.rows), prompt_length(parts, req)
        _, total_len = decode_lengths(parts, prompt_len, req.max_frames)
        self._load_text(req, batch)

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
        self.call_params = fresh
        self.cfg_coef.fill_(float(req.cfg_coef))
        noise = RowNoise(rows, parts.num_codebooks, parts.vocab_size, parts.device)

        # Prefill eagerly, reading the filled prefix only.
        fed = torch.cat([padded_prefix, padded_prefix]) if key.doubled else padded_prefix
        logits = self._prefill(fed)
        target = torch.tensor([start], device=parts.device)
        self._advance(logits, float(req.cfg_coef), fresh, noise.step(0), target)
        if req.on_step is not None:
            req.on_step(1, steps)

        # Then one graph replay per step; the graph reads position start .. and advances it. Step
        # `step` feeds position start + step - 1, so the host picks that position's chunk graph.
        self.position.fill_(start)
        for step in range(1, steps):
            step_noise = noise.step(step)
            chunk = (start + step - 1) // self.chunk
            if self.host_steps:
                self._step(host=start + step - 1, noise=step_noise)
            else:
                if step_noise is not None:
                    self.noise.copy_(step_noise)
                if self.graphs:
                    self.graphs[chunk].replay()
                    self.replays += 1
                else:
                    self._step(self.ends[chunk])
            if req.on_step is not None:
                if self.graphs and (step % SYNC_EVERY == 0 or step == steps - 1):
                    torch.cuda.current_stream(parts.device).synchronize()
                req.on_step(step + 1, steps)
        seq = self.seq[:batch, :, :total_len]
        return extract_frames(parts, seq, prompt_len, req.max_frames)


def copy_params(dst: SamplingTensors, src: SamplingTensors) -> None:
    dst.temperature.copy_(src.temperature)
    dst.top_k.copy_(src.top_k)
    dst.top_p.copy_(src.top_p)
    dst.greedy.copy_(src.greedy)
    dst.kth_index.copy_(src.kth_index)
    dst.top_p_drop.copy_(src.top_p_drop)
