"""`dgx-music model init-tiny DIR | init-random DIR --shape S | fetch NAME`: make or fetch checkpoints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.commands._common import add_config_arg, settings_or_exit
from daemon.core.errors import DgxMusicError, ErrorType, ExitCode

EXIT_OK = ExitCode.OK
EXIT_FAILED = ExitCode.JOB_FAILED
EXIT_USAGE = ExitCode.USAGE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model",
        help="make a tiny or random-weight checkpoint, or fetch a configured model into the cache",
        description="Checkpoints for the daemon. `init-tiny` and `init-random` work offline and write an "
        "ordinary save_pretrained folder (point a `models:` entry's `path` at it); `fetch` downloads a "
        "configured hub model into the Hugging Face cache (HF_HOME) for machines that run offline.",
    )
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: _usage(parser))

    tiny = sub.add_parser(
        "init-tiny", help="a tiny random MusicGen (for tests and demos; noise, fast on CPU)"
    )
    tiny.add_argument("dir", type=Path, metavar="DIR")
    tiny.add_argument("--stereo", action="store_true", help="a stereo model (8 interleaved codebooks)")
    tiny.add_argument(
        "--melody", action="store_true", help="a melody model (musicgen-melody: chroma conditioning)"
    )
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    tiny.set_defaults(func=run_init_tiny)

    rnd = sub.add_parser("init-random", help="random weights at the real musicgen-small/medium/large shapes")
    rnd.add_argument("dir", type=Path, metavar="DIR")
    rnd.add_argument("--shape", choices=("small", "medium", "large"), required=True)
    rnd.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="dtype of the saved weights (default float32; half halves the disk size)",
    )
    rnd.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    rnd.set_defaults(func=run_init_random)

    fetch = sub.add_parser("fetch", help="download a configured model into the Hugging Face cache")
    fetch.add_argument("name", metavar="NAME", help="a name under `models:` in the config")
    add_config_arg(fetch)
    fetch.set_defaults(func=run_fetch)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _refuse_non_empty(directory: Path) -> bool:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        print(
            f"dgx-music: {directory} exists and is not an empty directory; choose a new one", file=sys.stderr
        )
        return True
    return False


def run_init_tiny(args: argparse.Namespace) -> int:
    from daemon.ops.tinymodel import init_tiny

    if _refuse_non_empty(args.dir):
        return EXIT_USAGE
    path = init_tiny(args.dir, stereo=args.stereo, melody=args.melody, seed=args.seed)
    kind = " ".join(k for k, on in (("stereo", args.stereo), ("melody", args.melody)) if on)
    print(f"tiny {kind + ' ' if kind else ''}MusicGen checkpoint written to {path}")
    print(f"use it with:  models: {{tiny: {{path: {path.resolve()}}}}}")
    return EXIT_OK


def run_init_random(args: argparse.Namespace) -> int:
    from daemon.ops.tinymodel import init_random

    if _refuse_non_empty(args.dir):
        return EXIT_USAGE
    print(
        f"building musicgen-{args.shape} shape with random weights (this takes a while)...", file=sys.stderr
    )
    path = init_random(args.dir, args.shape, seed=args.seed, dtype=args.dtype)
    print(f"random musicgen-{args.shape} checkpoint written to {path}")
    return EXIT_OK


def run_fetch(args: argparse.Namespace) -> int:
    from daemon.engine.checkpoints import fetch
    from daemon.engine.hub import hf_cache_dir

    settings = settings_or_exit(args)
    try:
        path = fetch(args.name, settings)
    except DgxMusicError as exc:
        print(f"dgx-music: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.error_type == ErrorType.UNKNOWN_MODEL else EXIT_FAILED
    print(f"model {args.name} is in {path} (cache {hf_cache_dir()})")
    return EXIT_OK
