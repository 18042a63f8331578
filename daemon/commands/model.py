"""`dgx-music model init-tiny DIR | init-random DIR --shape S | fetch NAME`: make or fetch checkpoints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.commands._common import add_config_arg, settings_or_exit
from daemon.core.errors import DgxMusicError, ErrorType, ExitCode
from daemon.core.families import ACE_STEP, FAMILIES

EXIT_OK = ExitCode.OK
EXIT_FAILED = ExitCode.JOB_FAILED
EXIT_USAGE = ExitCode.USAGE

_SHAPES: dict[str, tuple[str, ...]] = {
    "musicgen": ("small", "medium", "large"),
    "ace-step": ("turbo", "base"),
}


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
        "init-tiny", help="a tiny random MusicGen or ACE-Step (for tests and demos; noise, fast on CPU)"
    )
    tiny.add_argument("dir", type=Path, metavar="DIR")
    tiny.add_argument(
        "--family",
        choices=FAMILIES,
        default="musicgen",
        help="musicgen (default) or ace-step (an AceStepPipeline folder: songs with lyrics, 48 kHz stereo)",
    )
    tiny.add_argument(
        "--variant",
        choices=("turbo", "base"),
        default="turbo",
        help="ace-step only: turbo (default; guidance distilled, no classifier-free guidance) or base "
        "(takes `guidance`)",
    )
    tiny.add_argument("--stereo", action="store_true", help="a stereo model (8 interleaved codebooks)")
    tiny.add_argument(
        "--melody", action="store_true", help="a melody model (musicgen-melody: chroma conditioning)"
    )
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    tiny.add_argument(
        "--adapter",
        type=Path,
        metavar="ADAPTER_DIR",
        help="ace-step only: also write a tiny random LoRA adapter of its DiT into ADAPTER_DIR "
        "(for `adapters:` in the config)",
    )
    tiny.set_defaults(func=run_init_tiny)

    rnd = sub.add_parser(
        "init-random",
        help="random weights at the real musicgen-small/medium/large or ACE-Step 1.5 turbo/base shapes",
    )
    rnd.add_argument("dir", type=Path, metavar="DIR")
    rnd.add_argument("--family", choices=FAMILIES, default="musicgen", help="musicgen (default) or ace-step")
    rnd.add_argument(
        "--shape",
        choices=_SHAPES["musicgen"] + _SHAPES["ace-step"],
        required=True,
        help="musicgen: small, medium, large; ace-step: turbo or base (the 2B DiT)",
    )
    rnd.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default=None,
        help="dtype of the saved weights (default float32 for musicgen, bfloat16 for ace-step: about 7 GB)",
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
    if args.family == ACE_STEP:
        if args.adapter is not None and _refuse_non_empty(args.adapter):
            return EXIT_USAGE
        if args.stereo or args.melody:
            print(
                "dgx-music: --stereo and --melody are MusicGen options (ACE-Step is always stereo)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        from daemon.ops.tinyacestep import init_tiny as init_tiny_acestep

        path = init_tiny_acestep(args.dir, variant=args.variant, seed=args.seed)
        print(f"tiny ACE-Step 1.5 {args.variant} checkpoint written to {path}")
        if args.adapter is not None:
            from daemon.ops.tinyacestep import init_tiny_adapter

            lora = init_tiny_adapter(args.adapter, seed=args.seed + 1)
            print(f"tiny LoRA adapter written to {lora}")
            print(
                f"use it with:  models: {{tiny-song: {{path: {path.resolve()}, "
                f"adapters: {{tiny: {{path: {lora.resolve()}}}}}}}}}"
            )
            return EXIT_OK
        print(f"use it with:  models: {{tiny-song: {{path: {path.resolve()}}}}}")
        return EXIT_OK
    if args.adapter is not None:
        print("dgx-music: --adapter is an ACE-Step option (add --family ace-step)", file=sys.stderr)
        return EXIT_USAGE
    path = init_tiny(args.dir, stereo=args.stereo, melody=args.melody, seed=args.seed)
    kind = " ".join(k for k, on in (("stereo", args.stereo), ("melody", args.melody)) if on)
    print(f"tiny {kind + ' ' if kind else ''}MusicGen checkpoint written to {path}")
    print(f"use it with:  models: {{tiny: {{path: {path.resolve()}}}}}")
    return EXIT_OK


def run_init_random(args: argparse.Namespace) -> int:
    from daemon.ops.tinymodel import init_random

    if args.shape not in _SHAPES[args.family]:
        print(
            f"dgx-music: --shape {args.shape} is not a {args.family} shape "
            f"(choose {', '.join(_SHAPES[args.family])})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if _refuse_non_empty(args.dir):
        return EXIT_USAGE
    if args.family == ACE_STEP:
        from daemon.ops.tinyacestep import init_random as init_random_acestep

        print(
            f"building the ACE-Step 1.5 {args.shape} shape with random weights (about 13 GB of memory)...",
            file=sys.stderr,
        )
        path = init_random_acestep(
            args.dir, variant=args.shape, seed=args.seed, dtype=args.dtype or "bfloat16"
        )
        print(f"random ACE-Step 1.5 {args.shape} checkpoint written to {path}")
        return EXIT_OK
    print(
        f"building musicgen-{args.shape} shape with random weights (this takes a while)...", file=sys.stderr
    )
    path = init_random(args.dir, args.shape, seed=args.seed, dtype=args.dtype or "float32")
    print(f"random musicgen-{args.shape} checkpoint written to {path}")
    return EXIT_OK


def run_fetch(args: argparse.Namespace) -> int:
    from daemon.core.families import spec_family
    from daemon.engine.checkpoints import fetch
    from daemon.engine.hub import hf_cache_dir

    settings = settings_or_exit(args)
    try:
        spec = settings.models.get(args.name)
        if spec is not None and spec_family(spec) == ACE_STEP:
            from daemon.engine.acestep.checkpoint import fetch as fetch_acestep

            path = fetch_acestep(args.name, settings)
        else:
            path = fetch(args.name, settings)
    except DgxMusicError as exc:
        print(f"dgx-music: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.error_type == ErrorType.UNKNOWN_MODEL else EXIT_FAILED
    print(f"model {args.name} is in {path} (cache {hf_cache_dir()})")
    return EXIT_OK
