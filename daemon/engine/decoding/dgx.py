"""dgx-music's own MusicGen decode loop (the "dgx" decode backend).

It runs transformers' text encoder and `enc_to_dec_proj` as they are, and the decoder step as
`daemon.engine.decoding.step.FusedDecoder`: the same weights and arithmetic regrouped into 8 kernels
per layer on CUDA (Triton kernels fuse each layer norm into its matmul), 13 on plain ATen ops.
Around it: the text encoder runs once per call, the KV cache is allocated once, the delay pattern
is built once on the CPU (transformers' own `build_delay_pattern_mask`), and per-row sampling
replaces the logits-processor chain (`daemon.engine.decoding.sampler`).
On CUDA one decode step, sampling included, is captured in CUDA graphs per shape bucket
(`daemon.engine.decoding.graphs`: batch padded to a power of two, or to the fixed row count under
batch invariance; sequence and text length to a multiple; one graph per self-attention chunk, so a
step attends over the live length rounded up to `attention_chunk` rather than the whole
capacity), so a step costs one graph launch; on CPU the same loop runs eagerly.
`DgxBackend.prepare` captures the buckets a daemon's jobs will use at load time (full batches,
the long-form window), so no job pays a capture.
The model pieces both paths call are in `daemon.engine.decoding.parts`.

Batch invariance: in reduced precision a row's arithmetic depends on the shapes it is computed at
(cuBLAS picks kernels by the row count M, the attention by the text length), so a job's tokens
would change with its batch mates. With `batch_invariant` on, every call of the bucket path runs at
one fixed row count (`max_rows` rounded up to a power of two) and each row's text at a length set
by that row's own token count (rows are grouped by it and each group decoded separately, the text
encoder included), so nothing a row is computed with depends on the other rows of the call. The
eager loop groups rows by text length the same way (on the CPU the text length is what changes a
bf16 row's text encoding; the row count does not).

Equivalence with transformers (tested): greedy decoding gives the same tokens as
`MusicgenForConditionalGeneration.generate` with and without classifier-free guidance, because
the unconditional half is built exactly as transformers builds it (zeroed text states, zeroed
attention mask, projected then masked), the same attention masks are used (as float masks), and the
eager path hands the attention the same shapes transformers' dynamic cache does.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from daemon.core.errors import GenerationError
from daemon.engine.decoding.api import DecodeRequest
from daemon.engine.decoding.graphs import ATTENTION_CHUNK, BucketKey, GraphBucket, next_pow2
from daemon.engine.decoding.parts import (
    ModelParts,
    call_on_step,
    check_request,
    decode_lengths,
    delay_pattern,
    encode_text,
    extract_frames,
    fixed_request,
    model_parts,
    round_up,
    text_length_calls,
)
from daemon.engine.decoding.sampler import NOISE_CHUNK_STEPS, RowNoise, guide, pick_tokens, sampling_tensors
from daemon.engine.decoding.step import choose_kernels, float_mask, fused_decoder
from daemon.engine.decoding.testseam import UNCAPTURED_GRAPH_PATH

log = logging.getLogger(__name__)

# Text tokens `prepare` captures for by default: a prompt of a line of tags is 15-30 T5 tokens.
PREPARED_TEXT_TOKENS = 32


# ---------------------------------------------------------------- eager loop (CPU, or CUDA without graphs)


def _decode_eager(parts: ModelParts, req: DecodeRequest, noise_chunk: int, kernels: str) -> torch.Tensor:
    batch, prompt_len = check_request(parts, req)
    doubled = req.cfg_coef is not None and req.cfg_coef > 1.0
    _, total_len = decode_lengths(parts, prompt_len, req.max_frames)
    encoder_states, mask_2d = encode_text(parts, req, doubled)
    prefix, pattern = delay_pattern(parts, batch, req.prompt_codes, total_len)
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

    decoder = fused_decoder(parts)
    decoder.use_kernels(kernels)
    cross_mask = float_mask(encoder_mask, parts.dtype)
    cross = decoder.cross_kv(encoder_states)
    kv = torch.zeros(
        (len(decoder.layers), 2, rows, parts.heads_count, total_len, parts.head_dim),
        dtype=decoder.kv_dtype,
        device=parts.device,
    )
    params = sampling_tensors(req.rows, parts.vocab_size, parts.device)
    noise = RowNoise(req.rows, parts.num_codebooks, parts.vocab_size, parts.device, noise_chunk)
    seq = pattern.clone()
    seq[:, :, :start] = prefix
    tokens = torch.cat([prefix, prefix]) if doubled else prefix
    position = 0
    for step in range(steps):
        logits = decoder(tokens, kv, position, None, cross, cross_mask)
        position += tokens.shape[-1]
        scores = guide(logits, req.cfg_coef, doubled)
        nxt = pick_tokens(scores, params, noise.step(step))
        forced = pattern[:, :, start + step]
        nxt = torch.where(forced == -1, nxt, forced)
        seq[:, :, start + step] = nxt
        tokens = nxt[:, :, None]
        if doubled:
            tokens = torch.cat([tokens, tokens])
        call_on_step(req.on_step, step + 1, steps)
    return extract_frames(parts, seq, prompt_len, req.max_frames)


# ---------------------------------------------------------------- the backend


def on_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


class DgxBackend:
    """`daemon.engine.decoding.api.DecodeBackend` implementation.

    `decode(model, req) -> codes [B, K, max_frames]`.

    Args:
        mode: "auto": CUDA graphs when the model is on CUDA, eager otherwise; "eager": never
            graphs; "graphs": CUDA graphs (the model must be on CUDA); tests also use
            `testseam.UNCAPTURED_GRAPH_PATH`.
        length_multiple: KV capacity is rounded up to this (one bucket serves many durations).
        text_multiple: text length is rounded up to this.
        max_buckets: captured buckets kept (least recently used dropped first, buckets made by
            `prepare` last); each holds its KV cache and graphs.
        attention_chunk: self-attention positions per captured graph: a step reads the live
            length rounded up to this; a bucket of capacity C holds ceil(C / attention_chunk) graphs.
        sync_every: on CUDA, wait for the GPU every this many steps before calling `on_step`, so
            progress reports and cancellation trail the device by a bounded amount.
        batch_invariant: "on": every decode runs the bucket path at `fixed_rows` rows and a text
            bucket of each row's own length (uncaptured where graphs do not run), so a row's
            tokens cannot depend on its batch mates; "off": buckets padded to the next power of
            two of the batch (fastest); "auto": on whenever CUDA graphs run, off otherwise. The
            eager loop always decodes each row's text at its own length, and runs the rows at the
            batch's count, which CPU kernels do not depend on (tested, not by construction).
        max_rows: the most rows a call gets (the engine's `max_batch`); `fixed_rows` is this
            rounded up to a power of two.
        text_group: where rows are grouped by their own text length (batch invariance, and the
            eager loop), that length is rounded up to this: prompts of a line of tags share one
            call, and the bucket `prepare` builds.
        kernels: "triton": the step's layer norms fused into the matmuls after them
            (`daemon.engine.decoding.kernels`: 8 kernels a layer instead of 13); "aten": plain
            PyTorch ops; "auto": triton on CUDA when Triton imports and the kernels pass their
            check on the loaded model (`step.kernels_mismatch`), aten otherwise (one warning says
            why). On a CPU "triton" runs Triton's interpreter: for tests only.
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
        attention_chunk: int = ATTENTION_CHUNK,
        batch_invariant: str = "auto",
        max_rows: int = 8,
        text_group: int = PREPARED_TEXT_TOKENS,
        kernels: str = "auto",
    ) -> None:
        if kernels not in ("auto", "triton", "aten"):
            raise ValueError(f"kernels must be auto, triton or aten, not {kernels!r}")
        self.kernels = kernels
        if mode not in ("auto", "eager", "graphs", UNCAPTURED_GRAPH_PATH):
            raise ValueError(f"mode must be auto, eager or graphs, not {mode!r}")
        if batch_invariant not in ("auto", "on", "off"):
            raise ValueError(f"batch_invariant must be auto, on or off, not {batch_invariant!r}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, not {max_rows}")
        self.batch_invariant = batch_invariant
        self.fixed_rows = next_pow2(max_rows)
        self.text_group = round_up(max(1, text_group), text_multiple)
        self.mode = mode
        self.length_multiple = length_multiple
        self.text_multiple = text_multiple
        self.max_buckets = max_buckets
        self.noise_chunk = noise_chunk or NOISE_CHUNK_STEPS
        self.sync_every = max(1, sync_every)
        self.attention_chunk = max(1, attention_chunk)
        self._buckets: OrderedDict[BucketKey, GraphBucket] = OrderedDict()
        # Set by `prepare`: its keys are evicted last, and requests up to `_prepared_length`
        # positions use that capacity (chunked attention makes the larger capacity cost memory only).
        self._pinned: set[BucketKey] = set()
        self._prepared_length = 0
        self._model_ref: weakref.ReferenceType[Any] | None = None
        # Why a capture failed (None: none did): decoding then goes on uncaptured, and says so.
        self.capture_error: str | None = None
        # The kernels chosen for the bound model (set on first use, checked once per load).
        self._kernels_used: str | None = None

    def reset(self) -> None:
        """Drop every captured graph and its buffers (call when the model is unloaded)."""
        self._kernels_used = None
        self._buckets.clear()
        self._pinned.clear()
        self._prepared_length = 0
        self._model_ref = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def release(self) -> None:
        """Free every bucket's memory (graphs, KV caches) but keep the model: after an OOM, before a retry."""
        self._buckets.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def kernels_for(self, model: Any) -> str:
        """The kernels the step of `model` runs on ("triton" or "aten"), chosen and checked once
        per model (see the `kernels` argument)."""
        self._bind(model)
        if self._kernels_used is None:
            parts = model_parts(model)
            self._kernels_used = choose_kernels(self.kernels, fused_decoder(parts), on_cuda(parts.device))
        return self._kernels_used

    def uses_graphs(self, model: Any) -> bool:
        """Whether decode steps of `model` are replayed from captured CUDA graphs."""
        device = next(model.decoder.parameters()).device
        if self.mode == "graphs" and device.type != "cuda":
            raise GenerationError(
                f"CUDA graphs need the model on a CUDA device, not {device}",
                hint="use decode mode auto or eager on this device",
            )
        return self.mode in ("auto", "graphs") and device.type == "cuda"

    def invariant(self, model: Any) -> bool:
        """Whether decodes of `model` run at fixed shapes (tokens independent of batch mates)."""
        if self.batch_invariant == "auto":
            return self.uses_graphs(model)
        return self.batch_invariant == "on"

    def uses_buckets(self, model: Any) -> bool:
        """Whether decodes of `model` run the bucket path (captured or not)."""
        return self.mode == UNCAPTURED_GRAPH_PATH or self.uses_graphs(model) or self.batch_invariant == "on"

    def bucket_key(self, model: Any, req: DecodeRequest) -> BucketKey:
        parts = model_parts(model)
        batch, prompt_len = check_request(parts, req)
        _, total_len = decode_lengths(parts, prompt_len, req.max_frames)
        length = round_up(total_len, self.length_multiple)
        if total_len <= self._prepared_length:
            length = self._prepared_length
        rows = self.fixed_rows if self.invariant(model) else next_pow2(batch)
        if batch > rows:
            raise ValueError(f"a batch of {batch} rows does not fit the fixed {rows} rows")
        return BucketKey(
            rows=rows,
            doubled=req.cfg_coef is not None and req.cfg_coef > 1.0,
            length=length,
            text_length=round_up(req.input_ids.shape[1], self.text_multiple),
            sampling=any(not row.is_greedy for row in req.rows),
        )

    def _new_bucket(self, parts: ModelParts, key: BucketKey, capture: bool) -> GraphBucket:
        """A bucket, captured when asked; a capture that fails (other than for memory) falls back to
        running the step uncaptured, with one warning for the backend's life."""
        fused_decoder(parts).use_kernels(self.kernels_for(parts.model))
        if not capture:
            return GraphBucket(parts, key, False, self.attention_chunk)
        log.info("capturing CUDA graphs for %s", key)
        try:
            return GraphBucket(parts, key, True, self.attention_chunk)
        except torch.OutOfMemoryError:
            self.release()  # a capture cut short by OOM may leave a broken graph pool behind
            raise
        except RuntimeError as exc:
            self.capture_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "CUDA graph capture failed (%s: %s); decoding without graphs from now on",
                type(exc).__name__,
                exc,
            )
            if torch.cuda.is_available():
                torch.cuda.synchronize(parts.device)
            return GraphBucket(parts, key, False, self.attention_chunk)

    @property
    def buckets(self) -> Sequence[BucketKey]:
        return list(self._buckets)

    def bucket(self, key: BucketKey) -> GraphBucket | None:
        """The resident bucket for `key` (its replay count, capture time, memory), if any."""
        return self._buckets.get(key)

    def prepare(
        self,
        model: Any,
        *,
        rows: int,
        frames: int,
        text_tokens: int = PREPARED_TEXT_TOKENS,
        doubled: bool = True,
        sampling: bool = True,
    ) -> list[BucketKey]:
        """Build (on CUDA: capture) the bucket that requests of up to `rows` rows, `frames` new
        frames (prompt included) and `text_tokens` text tokens decode in, so that no job pays it.

        From then on, every request of up to that length uses the prepared capacity, so one bucket
        serves every duration up to `frames` (a long-form window included); the bucket is evicted
        last. Greedy requests use a resident sampling bucket of their shape (its per-row greedy
        choice gives the argmax), so the default `sampling=True` serves both. Returns the keys
        built; none where the loop runs eagerly (CPU under mode "auto").
        """
        if not self.uses_buckets(model):
            return []
        parts = model_parts(model)
        self._bind(model)
        _, total_len = decode_lengths(parts, 0, frames)
        self._prepared_length = max(self._prepared_length, round_up(total_len, self.length_multiple))
        key = BucketKey(
            rows=self.fixed_rows if self.invariant(model) else next_pow2(rows),
            doubled=doubled,
            length=self._prepared_length,
            text_length=round_up(text_tokens, self.text_multiple),
            sampling=sampling,
        )
        t0 = time.monotonic()
        with torch.inference_mode():
            bucket = self._bucket_for(model, parts, key)
        self._pinned.add(key)
        log.info(
            "prepared the decode bucket %s in %.2f s (%d CUDA graphs, %.0f MiB)",
            key,
            time.monotonic() - t0,
            len(bucket.graphs),
            bucket.nbytes() / 2**20,
        )
        return [key]

    def _bind(self, model: Any) -> None:
        """Buckets belong to one model: another one (or a reload) drops them first."""
        if self._model_ref is None or self._model_ref() is not model:
            self.reset()
            self._model_ref = weakref.ref(model)

    def _bucket_for(self, model: Any, parts: ModelParts, key: BucketKey) -> GraphBucket:
        """The resident bucket for `key`, built (and on CUDA captured) when missing."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket
        if parts.core.embed_positions.weights.shape[0] < key.length + 1:
            # A new position table moves the buffer the captured graphs read: drop them.
            self._buckets.clear()
            parts.core.embed_positions.make_weights(key.length + 1, parts.core.embed_positions.embedding_dim)
        while len(self._buckets) >= self.max_buckets:
            unpinned = [k for k in self._buckets if k not in self._pinned]
            del self._buckets[unpinned[0] if unpinned else next(iter(self._buckets))]
        bucket = self._new_bucket(parts, key, self.uses_graphs(model) and self.capture_error is None)
        self._buckets[key] = bucket
        return bucket

    def decode(self, model: Any, req: DecodeRequest) -> torch.Tensor:
        with torch.inference_mode():
            parts = model_parts(model)
            if not self.uses_buckets(model):
                # Each row's text at its own length; the rows at the batch's count (CPU kernels
                # do not change with it: tested).
                kernels = self.kernels_for(model)
                eager = lambda sub: _decode_eager(parts, sub, self.noise_chunk, kernels)  # noqa: E731
                return self._by_text_length(parts, req, None, eager)
            self._bind(model)
            bucket = lambda sub: self._decode_bucket(model, parts, sub)  # noqa: E731
            if self.invariant(model):
                return self._by_text_length(parts, req, self.fixed_rows, bucket)
            return bucket(req)

    def _by_text_length(
        self,
        parts: ModelParts,
        req: DecodeRequest,
        rows: int | None,
        run: Callable[[DecodeRequest], torch.Tensor],
    ) -> torch.Tensor:
        """Rows grouped by their own text bucket (a multiple of `text_group`), each group run
        as one call at that text length: at exactly `rows` rows (padding added, more rows split
        into several calls) or, with None, at the group's own row count."""
        calls = text_length_calls(req, self.text_group, rows)
        out: torch.Tensor | None = None
        for c, (text_len, idx) in enumerate(calls):
            sub = fixed_request(parts, req, idx, rows or len(idx), text_len, c, len(calls))
            codes = run(sub)[: len(idx)]
            if out is None:
                out = codes.new_empty((len(req.rows), *codes.shape[1:]))
            out[torch.tensor(idx, device=codes.device)] = codes
        assert out is not None
        return out

    def _decode_bucket(self, model: Any, parts: ModelParts, req: DecodeRequest) -> torch.Tensor:
        key = self.bucket_key(model, req)
        shared = replace(key, sampling=True)
        if not key.sampling and key not in self._buckets and shared in self._buckets:
            key = shared  # greedy rows in a sampling bucket: the same argmax, no new capture
        bucket = self._bucket_for(model, parts, key)
        return bucket.decode(req, self.noise_chunk, self.sync_every)
