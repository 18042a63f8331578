"""The timbre of the checkpoint's learned silence, encoded once per model and row count.

A song without reference audio conditions its timbre on the condition encoder's learned silence
(30 s of it), which the pipeline runs through the timbre encoder at every call. The input is
the same every time, so the output is too: here it is computed once and kept, for as long as
the encoder's weights and silence are the ones it was computed from (their storage and
version are part of the key). At the real shape the timbre encoder over 750 frames is about
half of a call's conditioning; the rest (prompt and lyrics) is computed per call as the
pipeline does, and the packed conditioning is the pipeline's, bit for bit.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch

# Seconds of the learned silence the timbre encoder reads (the pipeline's timbre_fix_frame).
TIMBRE_SECONDS = 30

_cache: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def _weights_key(encoder: Any) -> tuple[Any, ...]:
    tensors = [*encoder.timbre_encoder.parameters(), encoder.silence_latent]
    return tuple((t.data_ptr(), t._version, t.dtype, str(t.device)) for t in tensors)


def silence_timbre(
    pipe: Any, rows: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(timbre embeddings, their mask) of `rows` rows hearing the learned silence: what
    `AceStepConditionEncoder.timbre_encoder` gives for it."""
    encoder = pipe.condition_encoder
    key = (rows, str(device), dtype, _weights_key(encoder))
    kept = _cache.setdefault(encoder, {})
    if key not in kept:
        frames = math.ceil(TIMBRE_SECONDS * pipe.latents_per_second)
        silence = encoder.silence_latent[:, :frames, :].to(device=device, dtype=dtype)
        with torch.no_grad():
            out = encoder.timbre_encoder(
                silence.expand(rows, -1, -1).contiguous(),
                torch.arange(rows, device=device, dtype=torch.long),
            )
        kept.clear()  # weights that changed leave nothing behind
        kept[key] = out
    return kept[key]


def conditioning_states(
    pipe: Any,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    lyrics: torch.Tensor,
    lyric_mask: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """`AceStepConditionEncoder.forward` for rows without reference audio, its timbre kept."""
    from diffusers.pipelines.ace_step.modeling_ace_step import _pack_sequences

    encoder = pipe.condition_encoder
    text_states = encoder.text_projector(text)
    lyric_states = encoder.lyric_encoder(inputs_embeds=lyrics, attention_mask=lyric_mask)
    timbre, timbre_mask = silence_timbre(pipe, text.shape[0], device, dtype)
    states, mask = _pack_sequences(lyric_states, timbre, lyric_mask, timbre_mask)
    states, _ = _pack_sequences(states, text_states, mask, text_mask)
    return states
