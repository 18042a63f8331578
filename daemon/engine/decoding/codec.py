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


def codes_to_audio(model: Any, codes: torch.Tensor) -> torch.Tensor:
    """Audio [B, channels, samples] (float32) from codes [B, K, T] through the model's EnCodec.

    Stereo MusicGen interleaves codebooks (even: left, odd: right), each half decoded by the mono codec.
    """
    codec = model.audio_encoder
    channels = model.config.decoder.audio_channels
    codes = codes.to(codec.device)
    if channels == 1:
        parts = [codes]
    else:
        parts = [codes[:, 0::2, :], codes[:, 1::2, :]]
    outs = []
    for part in parts:
        audio = codec.decode(part[None, ...], audio_scales=[None] * part.shape[0]).audio_values
        outs.append(audio)
    audio = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    return audio.float()


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
