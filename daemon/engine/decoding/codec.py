"""What the decode loops and the engine need to know of a MusicGen model's codec and delay pattern.

Frame rate and delay depth come from the loaded model's own config, never from constants: the
tiny test checkpoint runs at 40 frames/s, the hub models at 50.
"""

from __future__ import annotations

import math
from typing import Any

import torch


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


def codes_to_audio(
    model: Any, codes: torch.Tensor, *, window: int = WINDOW_FRAMES, context: int = CONTEXT_FRAMES
) -> torch.Tensor:
    """Audio [B, channels, samples] (float32, on the CPU) from codes [B, K, T] through the model's
    EnCodec, one row and one window of `window` frames (plus `context` on each side) at a time.

    Stereo MusicGen interleaves codebooks (even: left, odd: right), each half decoded by the mono codec.
    """
    codec = model.audio_encoder
    channels = model.config.decoder.audio_channels
    hop = math.prod(model.config.audio_encoder.upsampling_ratios)
    rows, _, frames = codes.shape
    out = torch.zeros(rows, channels, frames * hop, dtype=torch.float32)
    parts = [slice(None)] if channels == 1 else [slice(0, None, 2), slice(1, None, 2)]
    for row in range(rows):
        for channel, books in enumerate(parts):
            row_codes = codes[row : row + 1, books, :]
            for start in range(0, frames, window):
                stop = min(frames, start + window)
                lo, hi = max(0, start - context), min(frames, stop + context)
                piece = row_codes[..., lo:hi].to(codec.device)
                audio = codec.decode(piece[None, ...], audio_scales=[None]).audio_values
                audio = audio[0, 0, (start - lo) * hop : (stop - lo) * hop].float().cpu()
                out[row, channel, start * hop : start * hop + audio.shape[-1]] = audio
    return out


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
