"""Peak memory of turning a job's codes into published audio, by duration, at musicgen-small's codec
shape (EnCodec 32 kHz, hop 640, 4 codebooks; random weights, built in memory: no download).

    .venv/bin/python benchmarks/memory_by_duration.py                 # 30 s and 300 s, count 8
    .venv/bin/python benchmarks/memory_by_duration.py --durations 30 300 --count 8 --window 250

Each duration runs in a fresh process and reports how far its resident set rose above where it
stood before the codes were made (the same measure as a CPU job's sidecar `peak_memory_bytes`),
for the stages after the decoder: the codec decode (window by window), then per variation the
loudness normalisation and the waveform envelope. The language model's decoding is left out: its
memory is the KV cache, which depends on the window length, not the piece's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]


def one(duration: float, count: int, window: int) -> dict[str, float]:
    import torch
    from transformers import EncodecConfig, EncodecModel

    from daemon.audio.loudness import normalize
    from daemon.audio.waveform import peak_envelope
    from daemon.engine.decoding.codec import codes_to_audio
    from daemon.engine.devices import peak_memory_bytes, reset_peak_memory
    from daemon.ops.tinymodel import ENCODEC_32KHZ

    torch.manual_seed(0)
    torch.set_num_threads(1)
    codec_config = EncodecConfig(**ENCODEC_32KHZ)
    codec = EncodecModel(codec_config).eval()
    model = SimpleNamespace(
        audio_encoder=codec,
        config=SimpleNamespace(
            audio_encoder=codec_config, decoder=SimpleNamespace(audio_channels=1, num_codebooks=4)
        ),
    )
    frames = int(duration * 50)
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    codes = torch.randint(0, 2048, (count, 4, frames))
    with torch.inference_mode():
        audio = codes_to_audio(model, codes, window=window).numpy()
    after_decode = peak_memory_bytes(cpu)
    for row in audio:
        normalize(row, 32000, -14.0, -1.0)
        peak_envelope(row)
    return {
        "duration_s": duration,
        "count": count,
        "audio_bytes": float(audio.nbytes),
        "peak_after_decode_bytes": float(after_decode),
        "peak_bytes": float(peak_memory_bytes(cpu)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--durations", type=float, nargs="+", default=[30.0, 300.0])
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--window", type=int, default=250, help="codec window in frames (50 per second)")
    ap.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(one(args.child, args.count, args.window)))
        return 0
    rows = []
    for d in args.durations:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(d),
                "--count",
                str(args.count),
                "--window",
                str(args.window),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    mib = 1 << 20
    print(f"{'duration':>9} {'count':>5} {'audio MiB':>10} {'decode peak MiB':>16} {'job peak MiB':>13}")
    for r in rows:
        print(
            f"{r['duration_s']:>8.0f}s {r['count']:>5} {r['audio_bytes'] / mib:>10.0f} "
            f"{r['peak_after_decode_bytes'] / mib:>16.0f} {r['peak_bytes'] / mib:>13.0f}"
        )
    if len(rows) >= 2:
        print(
            f"peak ratio {rows[-1]['duration_s']:.0f} s / {rows[0]['duration_s']:.0f} s: "
            f"{rows[-1]['peak_bytes'] / rows[0]['peak_bytes']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
