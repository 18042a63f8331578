"""The ACE-Step VAE decode (`daemon.engine.acestep.vae`): window by window into one buffer per row,
the same bits as diffusers' tiled decode, within float rounding of one whole decode, and with a
working memory that does not grow with the song (measured by the daemon's own peak-memory window
in fresh processes, on the tiny pipeline's VAE)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from daemon.engine.acestep.vae import decode_rows, windows
from daemon.ops.tinyacestep import TINY_VAE

HOP = 1536  # the tiny VAE's samples per latent frame


@pytest.fixture(scope="module")
def vae() -> Any:
    from diffusers import AutoencoderOobleck

    torch.manual_seed(0)
    return AutoencoderOobleck(**TINY_VAE).eval()


def _pipeline_level(audio: torch.Tensor) -> np.ndarray:
    # AceStepPipeline.__call__'s own post-processing: anti-clip, then every row's peak at -1 dBFS.
    peak = audio.abs().amax(dim=[1, 2], keepdim=True)
    if torch.any(peak > 1.0):
        audio = audio / peak.clamp(min=1.0)
    peak = audio.abs().amax(dim=[1, 2], keepdim=True).clamp(min=1e-6)
    return (audio * (10.0 ** (-1.0 / 20.0) / peak)).numpy()


def _tiles(vae: Any, length: int, overlap: int) -> None:
    vae.enable_tiling()
    vae.tile_latent_min_length, vae.tile_latent_overlap = length, overlap


def test_windows_cover_the_latent_once_with_overlap(vae: Any) -> None:
    vae.disable_tiling()
    assert windows(1000, vae) == [(0, 1000, 0, 1000)]
    _tiles(vae, 96, 32)
    spans = windows(100, vae)
    assert [(s[2], s[3]) for s in spans] == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert spans[1][:2] == (0, 96) and spans[-1][:2] == (64, 100)
    assert windows(96, vae) == [(0, 96, 0, 96)]  # fits one tile: decoded whole


def test_windowed_decode_is_diffusers_tiled_decode_and_whole_within_rounding(vae: Any) -> None:
    z = torch.randn(1, 120, 8)
    samples = 120 * HOP - 1000  # the asked length cuts into the last frame
    vae.disable_tiling()
    whole = np.stack(decode_rows(vae, z, samples))
    _tiles(vae, 96, 32)  # 4 windows
    windowed = np.stack(decode_rows(vae, z, samples))
    with torch.no_grad():
        theirs = _pipeline_level(vae.decode(z.transpose(1, 2)).sample)
    assert windowed.shape == (1, 2, samples) and windowed.dtype == np.float32
    assert np.array_equal(windowed, theirs[..., :samples])
    # Windows only change how the convolutions are blocked: float rounding, at most 1e-5 of the peak.
    assert float(np.abs(windowed - whole).max()) <= 1e-5 * float(np.abs(whole).max())


def test_a_repaint_keeps_the_level_and_a_short_ask_is_padded(vae: Any) -> None:
    z = torch.randn(1, 40, 8) * 0.1
    vae.disable_tiling()
    with torch.no_grad():
        raw = vae.decode(z.transpose(1, 2)).sample[0].numpy()
    kept = decode_rows(vae, z, 40 * HOP + 500, level=False)[0]
    if np.abs(raw).max() <= 1.0:
        assert np.array_equal(kept[:, : 40 * HOP], raw)
    assert not kept[:, 40 * HOP :].any()


def _benchmark() -> Any:
    # benchmarks/ is a folder of scripts, not a package: load the script by its path.
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "acestep_vae_memory.py"
    spec = importlib.util.spec_from_file_location("acestep_vae_memory", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_working_memory_does_not_grow_with_the_song() -> None:
    bench = _benchmark()
    # 1 s windows, songs of 4 s and 40 s (as 60 s and 600 s are to the real 20 s tile), each in a
    # fresh process, side by side.
    procs = {s: bench.measure(s, tile=32, overlap=4) for s in (4, 40)}
    out = {s: bench.result(proc, timeout=120) for s, proc in procs.items()}
    work = {s: r["work_bytes"] for s, r in out.items()}
    grown_audio = out[40]["audio_bytes"] - out[4]["audio_bytes"]
    assert grown_audio > 10 << 20
    # The song's own samples grow tenfold; what the decode holds beside them may grow by less than
    # half of that (allocator slack), where a whole decode's audio-rate activations grow by many
    # times the audio (about 20 times at this shape).
    assert work[40] - work[4] < grown_audio // 2, out
    assert out[40]["peak_bytes"] < 2 * out[40]["audio_bytes"] + (16 << 20), out
