"""Latents to published audio through the VAE, row by row and window by window, with the level
diffusers' `AceStepPipeline` gives its output.

A 600 s song is 15,000 latent frames; the Oobleck decoder's activations at the audio rate are
about a hundred times the audio itself, so one whole decode would need gigabytes that grow with
the song. Here a latent longer than the VAE's tile is decoded in the same overlapping windows
as diffusers' tiled decode (`AutoencoderOobleck._tiled_decode`: `tile_latent_min_length`
frames with `tile_latent_overlap` on each side, trimmed back out), so the audio is the same
bits as the pipeline's; but every window's kept samples are copied straight into one float32
buffer per row on the CPU, exactly as long as the song, instead of being collected and joined.
What the decode holds beyond the song's own samples is then one window's work, whatever the
length, and on a GPU not even the song stays in device memory.

The decoder's Snake activations (x + sin(alpha x)^2 / beta, at every layer, on tensors the size
of the audio times the channels) run in place on one buffer instead of five (`lean_snakes`):
the same operations in the same order, so the same bits, without allocating and faulting in
four more such tensors each time.

The level is the pipeline's: anti-clip (a row whose peak is over 1 is divided by it), then the
row's peak brought to -1 dBFS. Each peak is the row's maximum over every decoded sample
(the tail past the asked length included), gathered window by window; dividing by a positive
number keeps the order of magnitudes, so the second peak is the first divided, the same value
the pipeline measures again.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

# The pipeline's output level: every row's peak at -1 dBFS.
TARGET_PEAK = 10.0 ** (-1.0 / 20.0)


def windows(frames: int, vae: Any) -> list[tuple[int, int, int, int]]:
    """(window start, window end, kept start, kept end) in latent frames: one whole window when
    the VAE does not tile or the latent fits one tile, else diffusers' tiled decode's windows."""
    chunk = int(getattr(vae, "tile_latent_min_length", frames))
    overlap = int(getattr(vae, "tile_latent_overlap", 0))
    if not getattr(vae, "use_tiling", False) or frames <= chunk:
        return [(0, frames, 0, frames)]
    stride = chunk - 2 * overlap
    if stride <= 0:
        raise ValueError(f"the VAE's tile ({chunk} frames) must be longer than twice its overlap ({overlap})")
    out = []
    for core_start in range(0, frames, stride):
        core_end = min(core_start + stride, frames)
        out.append((max(0, core_start - overlap), min(frames, core_end + overlap), core_start, core_end))
    return out


def _snake_in_place(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    # diffusers' Snake1d.forward, each step on one buffer: a*x, sin, ^2, times 1/(b + 1e-9), plus x
    # (the products and the sum commute, so the bits are the same).
    shape = hidden_states.shape
    alpha = torch.exp(self.alpha) if self.logscale else self.alpha
    beta = torch.exp(self.beta) if self.logscale else self.beta
    x = hidden_states.reshape(shape[0], shape[1], -1)
    out = alpha * x
    out.sin_()
    out.pow_(2)
    out.mul_((beta + 1e-9).reciprocal())
    out.add_(x)
    return out.reshape(shape)


@contextmanager
def lean_snakes(vae: Any) -> Iterator[None]:
    """Within the block, the Snake activations of `vae` work in place (see the module's doc)."""
    from diffusers.models.autoencoders.autoencoder_oobleck import Snake1d

    snakes = [m for m in vae.modules() if isinstance(m, Snake1d) and "forward" not in vars(m)]
    for m in snakes:
        m.forward = types.MethodType(_snake_in_place, m)
    try:
        yield
    finally:
        for m in snakes:
            del m.forward


@torch.no_grad()
def decode_rows(vae: Any, latents: torch.Tensor, samples: int, *, level: bool = True) -> list[np.ndarray]:
    """Audio per row of `latents` [rows, frames, dim]: float32 [channels, samples] on the CPU,
    trimmed or zero-padded to `samples`. `level`: the pipeline's anti-clip and -1 dBFS peak;
    otherwise only the anti-clip (a repaint keeps its source's level). Rows are decoded one at a
    time where the VAE slices (as the daemon loads it), else together, as diffusers would."""
    z = latents.transpose(1, 2)
    rows = z.shape[0]
    groups = [(r, r + 1) for r in range(rows)] if getattr(vae, "use_slicing", False) else [(0, rows)]
    out: list[np.ndarray] = []
    with lean_snakes(vae):
        for first, last in groups:
            out.extend(_decode_group(vae, z[first:last], samples, level))
    return out


def _decode_group(vae: Any, z: torch.Tensor, samples: int, level: bool) -> list[np.ndarray]:
    buffer: torch.Tensor | None = None
    peak = torch.zeros((z.shape[0], 1, 1), dtype=torch.float32)
    written = 0
    for win_start, win_end, core_start, core_end in windows(z.shape[-1], vae):
        tile = vae.decode(z[:, :, win_start:win_end]).sample
        # Trimmed as diffusers trims: audio per latent frame from this window's own sizes.
        upsample = tile.shape[-1] / (win_end - win_start)
        trim_l = int(round((core_start - win_start) * upsample))
        trim_r = int(round((win_end - core_end) * upsample))
        kept = tile[..., trim_l : tile.shape[-1] - trim_r if trim_r > 0 else tile.shape[-1]].float()
        peak = torch.maximum(peak, kept.abs().amax(dim=[1, 2], keepdim=True).cpu())
        if buffer is None:
            buffer = torch.zeros((kept.shape[0], kept.shape[1], samples), dtype=torch.float32)
        n = min(kept.shape[-1], samples - written)
        if n > 0:
            buffer[..., written : written + n].copy_(kept[..., :n])
        written += kept.shape[-1]
        del tile, kept
    assert buffer is not None
    if torch.any(peak > 1.0):
        clip = peak.clamp(min=1.0)
        buffer.div_(clip)
        peak = peak / clip
    if level:
        buffer.mul_(TARGET_PEAK / peak.clamp(min=1e-6))
    return list(buffer.numpy())
