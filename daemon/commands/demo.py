"""`dgx-music demo`: a temporary spool, the tiny model, the files from examples/, and a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from daemon.ops.demo import REPO_EXAMPLES

    p = sub.add_parser("demo", help="run the examples end to end on a tiny model in a temporary spool")
    p.add_argument("--dir", type=Path, default=None, help="work here instead of a new temporary directory")
    p.add_argument("--examples", type=Path, default=REPO_EXAMPLES, help=f"job files to run (default: {REPO_EXAMPLES})")
    p.add_argument("--cap", type=float, default=2.0, metavar="S", help="cap every duration at S seconds (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from daemon.ops.demo import DemoError, run_demo

    try:
        return run_demo(args.dir, args.examples, cap=args.cap, long_cap=max(args.cap, 4.0), device=args.device)
    except DemoError as exc:
        print(f"dgx-music demo: {exc}", file=sys.stderr)
        return 1
