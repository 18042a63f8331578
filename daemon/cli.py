"""`dgx-music` command line: one subcommand per module in `daemon.commands`.

Exit codes (daemon.core.errors.ExitCode): 0 ok, 1 job failed or benchmark blocker, 2 invalid
input or usage; `serve` also 78 (invalid config or spool) and 69 (the model cannot be loaded).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence

from daemon import __version__
from daemon.core.errors import ExitCode

# Each module defines `register(subparsers)`, adding a parser whose `func(args) -> int` runs it.
COMMAND_MODULES: tuple[str, ...] = (
    "validate",
    "config",
    "schema",
    "examples",
    "serve",
    "submit",
    "status",
    "cancel",
    "doctor",
    "model",
    "bench",
    "demo",
)

EXIT_OK = ExitCode.OK
EXIT_FAILED = ExitCode.JOB_FAILED
EXIT_USAGE = ExitCode.USAGE


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
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # `dgx-music status | head -1`: the reader has what it wanted. Point stdout at /dev/null so
        # the interpreter's flush at exit does not raise again, and end quietly like cat(1) does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
