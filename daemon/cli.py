"""`dgx-music` command line: one subcommand per module in `daemon.commands`.

Exit codes (docs/design.md): 0 ok, 1 job failed or benchmark blocker, 2 invalid input or usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from daemon import __version__

# Each module defines `register(subparsers)`, adding a parser whose `func(args) -> int` runs it.
COMMAND_MODULES: tuple[str, ...] = (
    "validate",
    "schema",
    "serve",
    "submit",
    "status",
    "cancel",
    "doctor",
    "model",
    "bench",
    "demo",
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgx-music",
        description="Music generation appliance: YAML jobs in a spool directory, MusicGen audio out.",
    )
    parser.add_argument("--version", action="version", version=f"dgx-music {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"daemon.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
