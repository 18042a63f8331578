"""What the decode loops and the engine need to know of a MusicGen model's codec and delay pattern.

Frame rate and delay depth come from the loaded model's own config, never from constants: the
tiny test checkpoint runs at 40 frames/s, the hub models at 50.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from daemon.core.pcm import Pcm


def channel_codebooks(model: Any) -> int:
    """Codebooks per audio channel: the depth of the delay pattern (stereo interleaves L/R codebooks)."""
    dec = model.config.decoder
    return dec.num_codebooks // dec.audio_channels


def delay_steps(model: Any) -> int:
    """Extra decoding steps the delay pattern costs: `generate` yields `steps - (K - 1)` frames."""
    return channel_codebooks(model) - 1


def frame_rate(model: Any) -> float:
    """Audio frames per second: sample rate / product of the codec's upsampling ratios."""
    cfg = model.config.audio_encoder
    return cfg.sampling_rate / math.prod(cfg.upsampling_ratios)


# Codes are turned into audio this many frames at a time, with CONTEXT_FRAMES of codes decoded on
# each side and cut away, so the codec's memory is that of one window whatever the duration. The
# context covers EnCodec's convolutions and lets its LSTM settle: the joins are inaudible (tested
# against a whole-signal decode). At 50 frames/s: 5 s windows with 1 s either side.
WINDOW_FRAMES = 250
CONTEXT_FRAMES = 50


def _row_windows(
    model: Any, codes: torch.Tensor, row: int, window: int, context: int
) -> Iterator[torch.Tensor]:
    """Audio [channels, n] (float32, on the CPU) of row `row` of codes [B, K, T], one window of
    `window` frames at a time, each decoded with `context` frames either side and cut to its own.

    Stereo MusicGen interleaves codebooks (even: left, odd: right), each half decoded by the mono codec.
    """
    codec = model.audio_encoder
    channels = model.config.decoder.audio_channels
    hop = math.prod(model.config.audio_encoder.upsampling_ratios)
    frames = codes.shape[-1]
    parts = [slice(None)] if channels == 1 else [slice(0, None, 2), slice(1, None, 2)]
    for start in range(0, frames, window):
        stop = min(frames, start + window)
        lo, hi = max(0, start - context), min(frames, stop + context)
        per_channel = []
        for books in parts:
            piece = codes[row : row + 1, books, lo:hi].to(codec.device)
            audio = codec.decode(piece[None, ...], audio_scales=[None]).audio_values
            per_channel.append(audio[0, 0, (start - lo) * hop : (stop - lo) * hop].float().cpu())
        yield torch.stack(per_channel)


def codes_to_audio(
    model: Any, codes: torch.Tensor, *, window: int = WINDOW_FRAMES, context: int = CONTEXT_FRAMES
) -> torch.Tensor:
    """Audio [B, channels, samples] (float32, on the CPU) from codes [B, K, T] through the model's
    EnCodec, one row and one window of `window` frames (plus `context` on each side) at a time."""
    return torch.stack(
        [
            torch.cat(list(_row_windows(model, codes, row, window, context)), dim=-1)
            for row in range(codes.shape[0])
        ]
    )


def codes_to_pcm(
    model: Any,
    codes: torch.Tensor,
    samples: int,
    *,
    directory: Path | str | None = None,
    window: int = WINDOW_FRAMES,
    context: int = CONTEXT_FRAMES,
) -> list[Pcm]:
    """`codes_to_audio`, each row written window by window into its own clip on disk (cut or padded
    to `samples`): no more than one window of audio is in memory at a time."""
    rows = []
    for row in range(codes.shape[0]):
        pcm = Pcm(int(model.config.decoder.audio_channels), directory)
        for audio in _row_windows(model, codes, row, window, context):
            pcm.append(audio[:, : max(0, samples - pcm.samples)].numpy())
        pcm.fit(samples)
        rows.append(pcm)
    return rows


def audio_to_codes(model: Any, audio: torch.Tensor, frames: int) -> torch.Tensor:
    """Codes [K, frames] of the last `frames` frames of `audio` ([channels, samples] at the model's
    rate and channel count) through the model's EnCodec: the token prefix of a continuation.

    Stereo MusicGen's codec is mono: each channel is encoded alone and the codebooks interleaved
    (even: left, odd: right), as `codes_to_audio` expects them.
    """
    codec = model.audio_encoder
    hop = math.prod(model.config.audio_encoder.upsampling_ratios)
    want = channel_codebooks(model)
    x = audio[..., -frames * hop :].to(codec.device, next(codec.parameters()).dtype)
    per_channel = []
    for c in range(x.shape[0]):
        out = codec.encode(x[c : c + 1][None, ...])
        codes = out.audio_codes[0, 0]  # [chunks, batch, K, T] -> [K, T]
        if codes.shape[0] != want:
            raise ValueError(
                f"the codec gave {codes.shape[0]} codebooks per channel, the decoder needs {want}"
            )
        per_channel.append(codes[..., -frames:])
    if len(per_channel) == 1:
        return per_channel[0].long()
    left, right = per_channel
    return torch.stack([left, right], dim=1).reshape(2 * want, left.shape[-1]).long()
