"""Decoding one MusicGen chunk: text, reference audio, long-form windows, codes to audio, OOM split.

Progress is counted in decoding steps over the whole call (all chunks and long-form windows), and
cancellation and the time limit are checked at every step. On CUDA out-of-memory a chunk is
retried once as two halves after the backend released its resident buffers and the cache was
freed; a second OOM fails the job (the daemon lives on).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import replace
from pathlib import Path

import torch

from daemon.core.errors import DgxMusicError, GenerationError, OutOfMemoryError
from daemon.core.pcm import Pcm
from daemon.engine.checkpoints import LoadedCheckpoint
from daemon.engine.decoding.api import DecodeBackend, DecodeRequest
from daemon.engine.decoding.codec import audio_to_codes, codes_to_pcm
from daemon.engine.family import StepClock
from daemon.engine.longform import SegmentText, decode_long
from daemon.engine.melody import to_rate_and_channels
from daemon.engine.plan import Chunk, Framing

log = logging.getLogger(__name__)


class ChunkRunner:
    """Decodes chunks of a loaded checkpoint, each on the step clock of its call."""

    def __init__(
        self,
        ckpt: LoadedCheckpoint,
        device: torch.device,
        backend: DecodeBackend,
        framing: Framing,
        directory: Path | None = None,
    ) -> None:
        self.ckpt, self.device, self.backend, self.framing = ckpt, device, backend, framing
        self.directory = directory  # where the rows' audio is written (daemon.core.pcm)

    def run(self, chunk: Chunk, clock: StepClock) -> list[Pcm]:
        """Audio per row; on CUDA out-of-memory: free the cache, split in halves, retry once."""
        try:
            return self._decode(chunk, clock)
        except torch.OutOfMemoryError as exc:
            self._release()
            if len(chunk.rows) == 1:
                raise OutOfMemoryError(
                    f"out of memory generating {chunk.frames} frames for one row on {self.device}",
                    hint="shorten the clip, use a smaller model, free GPU memory, or lower max_batch "
                    "(with batch_invariant on, every decode runs at max_batch rows)",
                ) from exc
            half = len(chunk.rows) // 2
            rows = len(chunk.rows)
            log.warning("out of memory with a batch of %d rows: retrying as %d + %d", rows, half, rows - half)
            out: list[Pcm] = []
            for part in (slice(0, half), slice(half, None)):
                sub = replace(chunk, rows=chunk.rows[part], prompts=chunk.prompts[part])
                clock.total += self.framing.steps(self.ckpt.model, sub)
                try:
                    out.extend(self._decode(sub, clock))
                except torch.OutOfMemoryError as exc2:
                    self._release()
                    raise OutOfMemoryError(
                        "out of memory even after splitting the batch "
                        f"({len(sub.rows)} of {len(chunk.rows)} rows)",
                        hint="lower max_batch (with batch_invariant on, every decode runs at max_batch "
                        "rows, halves included) or count, shorten the clip, or use a smaller model",
                    ) from exc2
            return out

    def _release(self) -> None:
        """After an OOM: the backend drops what it keeps resident (captured graphs, their KV caches)
        so that the half-batch retry has that memory, then the allocator's cache is freed."""
        getattr(self.backend, "release", lambda: None)()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _text(self, prompts: list[str]) -> SegmentText:
        enc = self.ckpt.processor(text=prompts, padding=True, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def _decode(self, chunk: Chunk, clock: StepClock) -> list[Pcm]:
        model = self.ckpt.model
        rows = len(chunk.rows)
        input_ids, attention_mask = self._text(chunk.prompts)
        texts = [self._text([p] * rows) for p in chunk.segment_prompts] if chunk.segment_prompts else None
        prompt_codes = None
        if chunk.continue_from is not None and chunk.prefix_frames:
            ref = chunk.continue_from
            channels = int(model.config.decoder.audio_channels)
            audio = to_rate_and_channels(ref.samples, ref.sample_rate, self.framing.sample_rate, channels)
            prefix = audio_to_codes(model, torch.from_numpy(audio), chunk.prefix_frames)
            prompt_codes = prefix[None].expand(rows, -1, -1).to(self.device)
        extras: dict[str, object] = {}
        if chunk.melody is not None:
            chroma = self.ckpt.processor.chroma(chunk.melody.samples, chunk.melody.sample_rate)
            extras["input_features"] = chroma.to(self.device, model.dtype).expand(rows, -1, -1)
        req = DecodeRequest(
            input_ids=input_ids,
            attention_mask=attention_mask,
            rows=[r.sampling for r in chunk.rows],
            cfg_coef=chunk.cfg_coef,
            max_frames=chunk.new_frames,
            prompt_codes=prompt_codes,
            extras=extras,
        )
        base = clock.done

        def call_step(done_in_chunk: int, _total: int) -> None:
            clock.advance(base + done_in_chunk)

        try:
            codes = decode_long(
                self.backend,
                model,
                req,
                window_frames=self.framing.window,
                stride_frames=self.framing.stride,
                on_step=call_step,
                segments=chunk.segment_frames,
                texts=texts,
            )
            clock.done = base + self.framing.steps(model, chunk)
            clock.check()
            return codes_to_pcm(model, codes, chunk.samples, directory=self.directory)
        except (DgxMusicError, torch.OutOfMemoryError):
            raise
        except BaseException as exc:
            if clock.callback_error is not None and exc is clock.callback_error:
                raise  # the caller's own progress callback failed: its exception, unchanged
            if isinstance(exc, Exception):
                raise GenerationError(f"generation failed: {type(exc).__name__}: {exc}") from exc
            raise
