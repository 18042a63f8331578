"""dgx-music's own MusicGen decode loop (the "dgx" decoder).

transformers' text encoder and `enc_to_dec_proj` run as they are; the decoder step is
`step.FusedDecoder`, run by the one loop of `graphs.GraphBucket` (static buffers per shape bucket,
one step function, per-row sampling). On CUDA the steps are captured in CUDA graphs and `prepare`
captures the buckets jobs will use at load time; elsewhere, or after a capture failed, the same
step runs uncaptured. Greedy tokens equal transformers' `generate`, with and without guidance
(tested). Batch invariance (`batch_invariant`): every call at one fixed row count and each row's
text at a length set by its own tokens, so a row's tokens cannot depend on its batch mates
(README "Reproducibility"); uncaptured calls group rows by text length the same way. The row
count is one by default: a job decodes at its own size alone or batched, not at a full batch's
(16 rows with guidance read 8x the cache of its own 2), and a batch's jobs one call after
another (prices in docs/gpu.md).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import torch

from daemon.engine.decoding.api import DecodeRequest
from daemon.engine.decoding.graphs import ATTENTION_CHUNK, BucketKey, GraphBucket, next_pow2
from daemon.engine.decoding.parts import (
    ModelParts,
    decode_lengths,
    fixed_request,
    model_parts,
    prompt_length,
    round_up,
    text_length_calls,
)
from daemon.engine.decoding.step import choose_kernels, fused_decoder
from daemon.engine.decoding.testseam import GRAPH_SHAPED

log = logging.getLogger(__name__)

# Text tokens `prepare` captures for, and the text buckets rows are grouped by: a prompt of a line
# of tags is 15-30 T5 tokens.
TEXT_TOKENS = 32
TEXT_MULTIPLE = 16


class DgxBackend:
    """`api.DecodeBackend`: `decode(model, req) -> codes [B, K, max_frames]`.

    batch_invariant: "on": every call at `fixed_rows` rows and a text bucket of each row's own
        length; "off": the batch padded to a power of two (fastest for full batches); "auto": on
        whenever CUDA graphs run.
    fixed_rows: the rows of every call under batch invariance (before guidance doubles them);
        more are decoded in several calls, fewer padded. 1: each job at its own size.
    kernels: "triton" (`kernels`: layer norms fused into the matmuls after them), "aten", or
        "auto": triton on CUDA when Triton imports and `step.kernels_mismatch` finds nothing.
    length_multiple, attention_chunk, max_buckets: KV capacity rounded up to the first, self-
        attention read in chunks of the second (one graph each), resident buckets kept (least
        recently used dropped first, `prepare`'s last).
    """

    name = "dgx"
    # Every row draws from its own torch.Generator, so the engine may batch rows of different
    # jobs together without changing any job's audio.
    per_row_seeds = True
    # None: captured on CUDA, uncaptured elsewhere; otherwise set by `testseam.run_steps`.
    test_steps: str | None = None

    def __init__(
        self,
        *,
        batch_invariant: str = "auto",
        fixed_rows: int = 1,
        kernels: str = "auto",
        length_multiple: int = 128,
        attention_chunk: int = ATTENTION_CHUNK,
        max_buckets: int = 4,
    ) -> None:
        self.batch_invariant, self.kernels = batch_invariant, kernels
        if fixed_rows < 1:
            raise ValueError(f"fixed_rows must be at least 1, not {fixed_rows}")
        self.fixed_rows = fixed_rows
        self.length_multiple, self.attention_chunk = length_multiple, attention_chunk
        self.max_buckets = max_buckets
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
        self._pinned.clear()
        self._prepared_length = 0
        self._model_ref = None
        self.release()

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
            self._kernels_used = choose_kernels(
                self.kernels, fused_decoder(parts), parts.device.type == "cuda"
            )
        return self._kernels_used

    def uses_graphs(self, model: Any) -> bool:
        """Whether decode steps of `model` are replayed from captured CUDA graphs."""
        return self.test_steps is None and next(model.decoder.parameters()).device.type == "cuda"

    def invariant(self, model: Any) -> bool:
        """Whether decodes of `model` run at fixed shapes (tokens independent of batch mates)."""
        if self.batch_invariant == "auto":
            return self.uses_graphs(model)
        return self.batch_invariant == "on"

    def keeps_buckets(self, model: Any) -> bool:
        """Whether buckets of `model` stay resident (captured, fixed shapes); else one per call."""
        return self.test_steps == GRAPH_SHAPED or self.uses_graphs(model) or self.batch_invariant == "on"

    def _key(
        self, model: Any, rows: int, total_len: int, text_tokens: int, doubled: bool, sampling: bool
    ) -> BucketKey:
        length = round_up(total_len, self.length_multiple)
        if total_len <= self._prepared_length:
            length = self._prepared_length
        return BucketKey(
            rows=self.fixed_rows if self.invariant(model) else next_pow2(rows),
            doubled=doubled,
            length=length,
            text_length=round_up(text_tokens, TEXT_MULTIPLE),
            sampling=sampling,
        )

    def bucket_key(self, model: Any, req: DecodeRequest) -> BucketKey:
        parts = model_parts(model)
        _, total_len = decode_lengths(parts, prompt_length(parts, req), req.max_frames)
        sampling, text = any(not row.is_greedy for row in req.rows), req.input_ids.shape[1]
        return self._key(model, len(req.rows), total_len, text, req.cfg_coef > 1.0, sampling)

    def _new_bucket(self, parts: ModelParts, key: BucketKey, capture: bool) -> GraphBucket:
        """A bucket, captured when asked; a capture that fails (other than for memory) falls back to
        running the step uncaptured, with one warning for the backend's life."""
        fused_decoder(parts).use_kernels(self.kernels_for(parts.model))
        uncaptured = lambda: GraphBucket(  # noqa: E731
            parts, key, False, self.attention_chunk, host_steps=self.test_steps != GRAPH_SHAPED
        )
        if not capture:
            return uncaptured()
        log.info("capturing CUDA graphs for %s", key)
        try:
            return GraphBucket(parts, key, True, self.attention_chunk)
        except torch.OutOfMemoryError:
            self.release()  # a capture cut short by OOM may leave a broken graph pool behind
            raise
        except RuntimeError as exc:
            self.capture_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "CUDA graph capture failed (%s); decoding without graphs from now on", self.capture_error
            )
            if parts.device.type == "cuda":
                torch.cuda.synchronize(parts.device)
            return uncaptured()

    @property
    def buckets(self) -> list[BucketKey]:
        return list(self._buckets)

    def bucket(self, key: BucketKey) -> GraphBucket | None:
        """The resident bucket for `key` (its replay count, capture time, memory), if any."""
        return self._buckets.get(key)

    def prepare(
        self, model: Any, *, rows: int, frames: int, text_tokens: int = TEXT_TOKENS
    ) -> list[BucketKey]:
        """Build (on CUDA: capture) the guided sampling bucket for requests of up to `rows` rows,
        `frames` frames and `text_tokens` text tokens, so that no job pays it: from then on every request
        up to that length uses its capacity (greedy ones too), and it is evicted last. Returns the
        keys built; none where buckets are not kept."""
        if not self.keeps_buckets(model):
            return []
        parts = model_parts(model)
        self._bind(model)
        _, total_len = decode_lengths(parts, 0, frames)
        self._prepared_length = max(self._prepared_length, round_up(total_len, self.length_multiple))
        key = self._key(model, rows, total_len, text_tokens, doubled=True, sampling=True)
        t0 = time.monotonic()
        with torch.inference_mode():
            bucket = self._bucket_for(model, parts, key)
        self._pinned.add(key)
        took, graphs, mib = time.monotonic() - t0, len(bucket.graphs), bucket.nbytes() / 2**20
        log.info("prepared the decode bucket %s in %.2f s (%d CUDA graphs, %.0f MiB)", key, took, graphs, mib)
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
        self._positions_for(parts, key.length)
        while len(self._buckets) >= self.max_buckets:
            unpinned = [k for k in self._buckets if k not in self._pinned]
            del self._buckets[unpinned[0] if unpinned else next(iter(self._buckets))]
        bucket = self._new_bucket(parts, key, self.uses_graphs(model) and self.capture_error is None)
        self._buckets[key] = bucket
        return bucket

    def _positions_for(self, parts: ModelParts, length: int) -> None:
        """A position table of at least `length + 1` rows; a new one moves the buffer the captured
        graphs read, so they are dropped."""
        if parts.core.embed_positions.weights.shape[0] < length + 1:
            self._buckets.clear()
            parts.core.embed_positions.make_weights(length + 1, parts.core.embed_positions.embedding_dim)

    def decode(self, model: Any, req: DecodeRequest) -> torch.Tensor:
        with torch.inference_mode():
            parts = model_parts(model)
            self._bind(model)
            if self.keeps_buckets(model) and not self.invariant(model):
                return self._run(model, parts, req)
            # Fixed rows, or uncaptured the batch's own count (CPU kernels do not change with it: tested).
            return self._by_text_length(model, parts, req, self.fixed_rows if self.invariant(model) else None)

    def _run(self, model: Any, parts: ModelParts, req: DecodeRequest) -> torch.Tensor:
        """`req` in its resident bucket (greedy rows in a resident sampling bucket of their shape:
        the same argmax, no new capture), or in a bucket of its own dropped after the call."""
        key = self.bucket_key(model, req)
        if not self.keeps_buckets(model):
            self._positions_for(parts, key.length)
            bucket = self._new_bucket(parts, key, False)
        else:
            shared = replace(key, sampling=True)
            if not key.sampling and key not in self._buckets and shared in self._buckets:
                key = shared
            bucket = self._bucket_for(model, parts, key)
        return bucket.decode(req)

    def _by_text_length(
        self, model: Any, parts: ModelParts, req: DecodeRequest, rows: int | None
    ) -> torch.Tensor:
        """Rows grouped by their own text bucket (a multiple of `TEXT_TOKENS`), each group run
        as one call at that text length: at exactly `rows` rows (padding added, more rows split
        into several calls) or, with None, at the group's own row count."""
        calls = text_length_calls(req, TEXT_TOKENS, rows)
        out: torch.Tensor | None = None
        for c, (text_len, idx) in enumerate(calls):
            sub = fixed_request(parts, req, idx, rows or len(idx), text_len, c, len(calls))
            codes = self._run(model, parts, sub)[: len(idx)]
            if out is None:
                out = codes.new_empty((len(req.rows), *codes.shape[1:]))
            out[torch.tensor(idx, device=codes.device)] = codes
        assert out is not None
        return out
