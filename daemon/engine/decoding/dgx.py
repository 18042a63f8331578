"""dgx-music's own MusicGen decode loop (the "dgx" decode backend).

It runs transformers' text encoder and `enc_to_dec_proj` as they are, and the decoder step as
`daemon.engine.decoding.step.FusedDecoder` (the same weights and arithmetic regrouped into fewer
kernels). There is one loop, `daemon.engine.decoding.graphs.GraphBucket`: static buffers per shape
bucket (batch padded to a power of two, or to the fixed row count under batch invariance; KV and
text length rounded up), one step function, and per-row sampling (`sampler`). On CUDA its steps
are captured in CUDA graphs (one per self-attention chunk), so a step costs one graph launch, and
`DgxBackend.prepare` captures the buckets jobs will use at load time. Without capture (on a CPU,
or after a capture failed) the same step runs uncaptured; a CPU call builds its bucket and drops
it after. The model pieces are in `parts`; docs/gpu.md tells the whole story.

Batch invariance: in reduced precision a row's arithmetic depends on the shapes it is computed at
(the row count, the text length), so a job's tokens would change with its batch mates. With
`batch_invariant` on, every call runs at one fixed row count (`max_rows` rounded up to a power of
two) and each row's text at a length set by its own token count (rows grouped by it, each group
decoded separately), so nothing a row is computed with depends on the other rows. Uncaptured calls
group rows by text length the same way (on the CPU the text length is what changes a bf16 row's
text encoding; the row count does not).

Equivalence with transformers (tested): greedy decoding gives the same tokens as
`MusicgenForConditionalGeneration.generate` with and without classifier-free guidance: the
unconditional half is built as transformers builds it (zeroed text states and mask, projected then
masked), and masked positions add nothing to an attention.
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
    check_request,
    decode_lengths,
    fixed_request,
    model_parts,
    round_up,
    text_length_calls,
)
from daemon.engine.decoding.sampler import NOISE_CHUNK_STEPS
from daemon.engine.decoding.step import choose_kernels, fused_decoder
from daemon.engine.decoding.testseam import UNCAPTURED_GRAPH_PATH

log = logging.getLogger(__name__)

# Text tokens `prepare` captures for by default: a prompt of a line of tags is 15-30 T5 tokens.
PREPARED_TEXT_TOKENS = 32


# ---------------------------------------------------------------- the backend


def on_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


class DgxBackend:
    """`daemon.engine.decoding.api.DecodeBackend`: `decode(model, req) -> codes [B, K, max_frames]`.

    Args:
        mode: "auto": CUDA graphs when the model is on CUDA, uncaptured otherwise; "eager": never
            capture; "graphs": CUDA graphs (the model must be on CUDA); tests also use
            `testseam.UNCAPTURED_GRAPH_PATH` (resident uncaptured buckets on any device).
        length_multiple, text_multiple: KV capacity and text length are rounded up to these.
        max_buckets: resident buckets kept (least recently used dropped first, `prepare`'s last).
        attention_chunk: self-attention positions per captured graph (a step reads the live length
            rounded up to this).
        sync_every: on CUDA, wait for the GPU every this many steps before calling `on_step`.
        batch_invariant: "on": every call at `fixed_rows` rows and a text bucket of each row's own
            length, so a row's tokens cannot depend on its batch mates; "off": the batch padded to
            a power of two (fastest); "auto": on whenever CUDA graphs run.
        max_rows: the most rows a call gets (`max_batch`); `fixed_rows` is this rounded up to a
            power of two.
        text_group: rows grouped by their own text length round it up to this.
        kernels: "triton" (layer norms fused into the matmuls after them, `kernels`), "aten"
            (plain PyTorch ops), or "auto": triton on CUDA when Triton imports and the kernels pass
            their check on the loaded model (`step.kernels_mismatch`). On a CPU "triton" runs
            Triton's interpreter: for tests only.
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

    def keeps_buckets(self, model: Any) -> bool:
        """Whether buckets of `model` stay resident (captured, fixed shapes); else one per call."""
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
        host_steps = self.mode != UNCAPTURED_GRAPH_PATH
        if not capture:
            return GraphBucket(parts, key, False, self.attention_chunk, host_steps=host_steps)
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
            return GraphBucket(parts, key, False, self.attention_chunk, host_steps=host_steps)

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
        """Build (on CUDA: capture) the bucket for requests of up to `rows` rows, `frames` frames
        and `text_tokens` text tokens, so that no job pays it: from then on every request up to
        that length uses its capacity, and it is evicted last. Greedy requests use a resident
        sampling bucket of their shape. Returns the keys built; none where buckets are not kept."""
        if not self.keeps_buckets(model):
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
            if not self.keeps_buckets(model):
                # Uncaptured, one call at a time: each row's text at its own length, the rows at
                # the batch's count (CPU kernels do not change with it: tested).
                return self._by_text_length(
                    parts, req, None, lambda sub: self._decode_once(model, parts, sub)
                )
            bucket = lambda sub: self._decode_bucket(model, parts, sub)  # noqa: E731
            if self.invariant(model):
                return self._by_text_length(parts, req, self.fixed_rows, bucket)
            return bucket(req)

    def _decode_once(self, model: Any, parts: ModelParts, req: DecodeRequest) -> torch.Tensor:
        """The bucket path without capture in a bucket of its own, dropped after the call."""
        key = self.bucket_key(model, req)
        self._positions_for(parts, key.length)
        return self._new_bucket(parts, key, False).decode(req, self.noise_chunk, self.sync_every)

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
