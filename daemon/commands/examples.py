"""`dgx-music examples DIR`: copy the shipped example jobs and job.schema.json into DIR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.core.errors import ExitCode
from jobspec.examples import copy_examples


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "examples",
        help="copy the example job files (and job.schema.json, which their modeline names) into DIR",
        description="Copy the example job files shipped with dgx-music into DIR, with job.schema.json "
        "beside them (each example's first line names it, so editors with the YAML language server "
        "complete and check fields). Edit one and `dgx-music submit` it.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="where to put them (created if missing)")
    p.add_argument("--force", action="store_true", help="replace files of the same name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        written = copy_examples(args.dir, overwrite=args.force)
    except FileExistsError as exc:
        print(f"dgx-music examples: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except OSError as exc:
        print(f"dgx-music examples: cannot write to {args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.USAGE
    for path in written:
        print(path)
    return ExitCode.OK
