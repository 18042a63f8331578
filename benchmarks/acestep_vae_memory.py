"""Peak memory of an ACE-Step VAE decode by song length (the daemon's `daemon.engine.acestep.vae`),
on the tiny pipeline's VAE (random weights, built in memory: no download), CPU.

    .venv/bin/python benchmarks/acestep_vae_memory.py                     # 60 s and 600 s
    .venv/bin/python benchmarks/acestep_vae_memory.py --durations 60 600 --whole

Each length runs in a fresh process: the decode's kernels are warmed up on one tile first, then
the daemon's peak-memory window (`daemon.engine.devices.reset_peak_memory`, the CPU job's
`peak_memory_bytes`) measures how far the resident set rises while the latents become the song's
audio. `work` is that rise less the song's own float32 samples: what the decode holds beside
them. glibc's mmap threshold is fixed (MALLOC_MMAP_THRESHOLD_) so that freed blocks leave the
resident set and it follows what is live. `--whole`: the same with the VAE's tiling off (one
decode of the whole latent), for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
RATE = 48000
HOP = 1536  # the tiny VAE's samples per latent frame


def child(seconds: float, tile: int | None, overlap: int | None, whole: bool) -> dict[str, float]:
    import torch
    from diffusers import AutoencoderOobleck

    from daemon.engine.acestep.vae import decode_rows
    from daemon.engine.devices import peak_memory_bytes, reset_peak_memory
    from daemon.ops.tinyacestep import TINY_VAE

    torch.manual_seed(0)
    torch.set_num_threads(1)
    vae = AutoencoderOobleck(**TINY_VAE).eval()
    if not whole:
        vae.enable_tiling()
    if tile is not None:
        vae.tile_latent_min_length = tile
    if overlap is not None:
        vae.tile_latent_overlap = overlap
    first = min(vae.tile_latent_min_length, 512)
    decode_rows(vae, torch.randn(1, first, 8), first * HOP)  # one-time kernel buffers, out of the window
    z = torch.randn(1, int(seconds * RATE / HOP), 8)
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    audio = decode_rows(vae, z, int(seconds * RATE))[0]
    peak = peak_memory_bytes(cpu)
    return {
        "duration_s": seconds,
        "tiled": not whole,
        "audio_bytes": float(audio.nbytes),
        "peak_bytes": float(peak),
        "work_bytes": float(peak - audio.nbytes),
    }


def measure(
    seconds: float, *, tile: int | None = None, overlap: int | None = None, whole: bool = False
) -> subprocess.Popen[str]:
    """A fresh process measuring one length; its last stdout line is `child`'s JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(seconds)]
    cmd += ["--tile", str(tile)] if tile is not None else []
    cmd += ["--overlap", str(overlap)] if overlap is not None else []
    cmd += ["--whole"] if whole else []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def result(proc: subprocess.Popen[str], timeout: float = 3600.0) -> dict[str, float]:
    stdout, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the measuring process failed ({proc.returncode})")
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--durations", type=float, nargs="+", default=[60.0, 600.0])
    ap.add_argument("--whole", action="store_true", help="also decode each length whole, untiled")
    ap.add_argument("--tile", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--overlap", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.tile, args.overlap, args.whole)))
        return 0
    rows = [result(measure(d)) for d in args.durations]
    if args.whole:
        rows += [result(measure(d, whole=True)) for d in args.durations]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("ACE-Step VAE decode, tiny pipeline's VAE (48 kHz stereo, hop 1536), CPU, one row")
    print(f"{'duration':>9} {'decode':>7} {'audio MiB':>10} {'peak rise MiB':>14} {'work MiB':>9}")
    for r in rows:
        print(
            f"{r['duration_s']:>8.0f}s {'tiled' if r['tiled'] else 'whole':>7} "
            f"{r['audio_bytes'] / MIB:>10.1f} "
            f"{r['peak_bytes'] / MIB:>14.1f} {r['work_bytes'] / MIB:>9.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
