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
