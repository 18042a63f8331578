"""`dgx-music demo`: a temporary spool, the tiny model, the shipped example jobs, and a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the examples end to end on a tiny model in a temporary spool",
        description="Build tiny random checkpoints offline (MusicGen, musicgen-melody and an ACE-Step "
        "pipeline for songs with lyrics), start a real daemon on a new spool, submit every example "
        "(durations capped), wait, and print a table of the results, the lyrics of the songs, where they "
        "are and the address of the outbox page. The audio is noise-like (random weights): "
        "this shows the machinery, not the music. Needs no GPU and no network.",
    )
    p.add_argument(
        "--dir", type=Path, default=None, metavar="DIR", help="work here instead of a new temporary directory"
    )
    p.add_argument(
        "--examples",
        type=Path,
        default=None,
        metavar="DIR",
        help="a directory of job files to run (default: the examples shipped with dgx-music)",
    )
    p.add_argument(
        "--cap", type=float, default=2.0, metavar="S", help="cap every duration at S seconds (default 2)"
    )
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from daemon.ops.demo import DemoError, run_demo
    from jobspec.examples import examples_dir

    try:
        if args.examples is not None:
            return run_demo(
                args.dir, args.examples, cap=args.cap, long_cap=max(args.cap, 4.0), device=args.device
            )
        with examples_dir() as shipped:
            return run_demo(args.dir, shipped, cap=args.cap, long_cap=max(args.cap, 4.0), device=args.device)
    except DemoError as exc:
        print(f"dgx-music demo: {exc}", file=sys.stderr)
        return 1
