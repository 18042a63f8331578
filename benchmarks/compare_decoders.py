#!/usr/bin/env python3
"""Compare transformers `generate` with dgx-music's decode loop on one model, in one run.

    python benchmarks/compare_decoders.py --shape tiny --durations 4,8
    python benchmarks/compare_decoders.py --shape small --durations 16 --batch 8 --json
    python benchmarks/compare_decoders.py --model-dir /var/lib/dgx-music/models/small

`--shape small|medium|large` uses random weights at the real MusicGen shapes (made once with
`daemon.ops.tinymodel.init_random` and kept under --cache-dir); `--shape tiny` makes the tiny test
model in a temporary directory. The work is done by `daemon.ops.decodebench.compare`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _model_dir(args: argparse.Namespace, scratch: Path) -> Path:
    from daemon.ops.tinymodel import init_random, init_tiny

    if args.model_dir:
        return Path(args.model_dir)
    if args.shape == "tiny":
        return init_tiny(scratch / "tiny")
    target = Path(args.cache_dir).expanduser() / f"random-{args.shape}"
    if not (target / "config.json").exists():
        print(f"making random {args.shape} weights in {target} (once)", file=sys.stderr)
        init_random(target, args.shape)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-dir", help="a MusicGen checkpoint directory")
    source.add_argument("--shape", choices=["tiny", "small", "medium", "large"], default="tiny")
    parser.add_argument(
        "--cache-dir", default="~/.cache/dgx-music", help="where random-shape weights are kept"
    )
    parser.add_argument("--durations", default="4,8,16,30", help="comma-separated seconds")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | float32 | float16 | bfloat16"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per engine; the fastest counts")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--cfg-coef", type=float, default=3.0)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0: torch's default); 1 gives steadier figures on a shared machine",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)

    try:
        durations = [float(x) for x in args.durations.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--durations must be comma-separated numbers, not {args.durations!r}")
    if not durations or any(d <= 0 for d in durations) or args.batch < 1:
        parser.error("durations must be positive and --batch at least 1")

    import torch
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    from daemon.ops.decodebench import compare, format_table

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if args.dtype == "auto":
        dtype = (
            (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
            if device.type == "cuda"
            else torch.float32
        )
    else:
        dtype = getattr(torch, args.dtype)

    with tempfile.TemporaryDirectory() as scratch:
        directory = _model_dir(args, Path(scratch))
        processor = AutoProcessor.from_pretrained(directory)
        model = MusicgenForConditionalGeneration.from_pretrained(directory, dtype=dtype).to(device).eval()
        name = args.shape if not args.model_dir else Path(args.model_dir).name
        rows = compare(
            model,
            processor,
            durations,
            args.batch,
            model_name=name,
            cfg_coef=args.cfg_coef,
            greedy=args.greedy,
            repeats=args.repeats,
            progress=None if args.json else (lambda msg: print(msg, file=sys.stderr)),
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
