"""`dgx-music bench [--model NAME] [--durations 4,8,16,30] [--json] [--tiny | --shape S] [--compare | --ops]`.

Without --compare: the benchmark. With it: transformers `generate` against our decode loop.
With --ops: the ATen ops that do work in one decode step (`daemon.ops.opcount`).

Exit 0, or 1 when the verdict is BLOCKER (16 s clip over 60 s) or the model cannot run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from daemon.commands._common import add_config_arg, config_path
from daemon.core.config import ConfigError, Settings, load_settings
from daemon.core.errors import DgxMusicError, ErrorType, ExitCode

EXIT_OK = ExitCode.OK
EXIT_FAILED = ExitCode.JOB_FAILED
EXIT_USAGE = ExitCode.USAGE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time 4/8/16/30 s clips; verdict for 16 s: "
        "EXCELLENT < 30 s, ACCEPTABLE, BLOCKER > 60 s (exit 1)",
        description="Load a model and generate clips of each duration: generation time, real-time factor "
        "(generation seconds per audio second), peak memory, and the verdict for the 16 s clip.",
    )
    add_bench_args(parser)
    parser.set_defaults(func=run)


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    """Options shared with `bench --compare`."""
    add_config_arg(parser)
    parser.add_argument(
        "--model", default=None, metavar="NAME", help="a configured model (default: default_model)"
    )
    parser.add_argument(
        "--durations",
        type=parse_durations,
        default=None,
        metavar="S,S,...",
        help="clip lengths in seconds (default 4,8,16,30)",
    )
    parser.add_argument("--batch", type=int, default=1, metavar="N", help="variations per clip (default 1)")
    parser.add_argument(
        "--device", default=None, help="override the config's device (auto, cpu, cuda, cuda:N)"
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "float16", "bfloat16"),
        default=None,
        help="override the config's dtype (with --compare: both engines run at it)",
    )
    parser.add_argument(
        "--decoder",
        choices=("auto", "dgx", "transformers"),
        default=None,
        help="override the config's decode loop",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="benchmark a tiny random model built in a temporary directory (runs anywhere)",
    )
    parser.add_argument(
        "--family",
        choices=("musicgen", "ace-step"),
        default="musicgen",
        help="the model family of --tiny / --shape (default musicgen); with ace-step, --compare times "
        "diffusers' AceStepPipeline against the daemon's render",
    )
    parser.add_argument(
        "--shape",
        choices=("small", "medium", "large", "turbo", "base"),
        default=None,
        help="random weights at this real shape (musicgen: small, medium, large, built in a temporary "
        "directory; ace-step: turbo or base, the 2B DiT, built in memory)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="ace-step: denoising steps (default the checkpoint's)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        metavar="N",
        help="--compare: timed runs per engine and length after the warm-up, interleaved (default 1; "
        "ace-step 4, who goes first alternating); the fastest counts, the median is reported beside it",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="transformers generate and our decode loop on the same model, prompts and lengths",
    )
    parser.add_argument(
        "--ops",
        action="store_true",
        help="count the ATen ops that do work in one decode step of our loop "
        "(views and identities left out): ops_per_step, ops_per_layer, layers "
        "(on the CPU in float32 unless --dtype is given; a Triton kernel counts as one op)",
    )
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default=None,
        help="ace-step --compare: override the config's compile setting; on adds a third engine, the "
        "render with the DiT under torch.compile (auto: on with CUDA)",
    )
    parser.add_argument(
        "--kernels",
        choices=("auto", "triton", "aten"),
        default=None,
        help="override the config's kernels setting; with --ops the default is triton wherever "
        "Triton imports (the step a GPU runs; on a CPU in Triton's interpreter), else aten",
    )


def parse_durations(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"durations must be numbers separated by commas, got {text!r}"
        ) from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"durations must be positive seconds, got {text!r}")
    return values


def bench_settings(args: argparse.Namespace, tiny_dir: Path | None) -> Settings:
    overrides: dict[str, Any] = {}
    if args.device:
        overrides["device"] = args.device
    if args.decoder:
        overrides["decoder"] = args.decoder
    if getattr(args, "dtype", None):
        overrides["dtype"] = args.dtype
    if getattr(args, "kernels", None):
        overrides["kernels"] = args.kernels
    if getattr(args, "compile", None):
        overrides["compile"] = args.compile
    if tiny_dir is not None:
        name = tiny_dir.name
        overrides["models"] = {name: {"path": str(tiny_dir)}}
        overrides["default_model"] = name
    return load_settings(config_path(args), **overrides)


def made_model(args: argparse.Namespace, tmp: Path) -> Path | None:
    """--tiny / --shape: a checkpoint built here, so the benchmark needs no download (ACE-Step
    shapes are built in memory by run_song_compare)."""
    if args.family == "ace-step":
        if args.tiny:
            from daemon.ops.tinyacestep import init_tiny as init_tiny_song

            return init_tiny_song(tmp / "tiny-song")
        return None
    if args.tiny:
        from daemon.ops.tinymodel import init_tiny

        return init_tiny(tmp / "tiny")
    if args.shape:
        from daemon.ops.tinymodel import init_random

        print(f"building random weights at the musicgen-{args.shape} shape...", file=sys.stderr)
        # Half precision on disk keeps the large shape at ~7 GB; the load casts to the run dtype.
        return init_random(tmp / args.shape, args.shape, dtype="float16")
    return None


def run_song_compare(args: argparse.Namespace, settings: Settings, model_name: str | None) -> int:
    """`--compare --family ace-step`: diffusers' own pipeline call against the daemon's render."""
    from daemon.engine.acestep.compiled import ON, compile_mode
    from daemon.engine.devices import resolve_device, resolve_dtype
    from daemon.ops.decodebench import format_table
    from daemon.ops.songbench import COMPILED, compare

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    if args.shape:
        from daemon.ops.tinyacestep import real_pipeline

        print(f"building random weights at the ACE-Step 1.5 {args.shape} shape in memory...", file=sys.stderr)
        pipe = real_pipeline(variant=args.shape).to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
        pipe.vae.enable_slicing()
        pipe.vae.enable_tiling()
        name = f"acestep-{args.shape}"
    else:
        from daemon.engine.acestep.checkpoint import load_pipeline

        name = model_name or settings.default_model
        pipe = load_pipeline(name, settings, device=device, dtype=dtype).pipe
    compiled = compile_mode(settings, device) == ON
    skipped = None
    if not compiled:
        skipped = (
            "compile: off"
            if settings.compile == "off"
            else f"compile: auto compiles on CUDA only, not {device}"
        )
    rows = compare(
        pipe,
        args.durations or (4.0, 8.0),
        args.batch,
        model_name=name,
        steps=args.steps,
        repeats=max(1, args.repeats or 4),
        progress=lambda text: print(text, file=sys.stderr),
        compiled=compiled,
        compile_skipped=skipped,
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
        for row in rows:
            print(_song_verdict(row))
    ok = all(r["within_tolerance"] if r["engine"] == COMPILED else r["identical"] for r in rows)
    return EXIT_OK if ok else EXIT_FAILED


def _song_verdict(row: dict[str, Any]) -> str:
    """One line per engine row of the ACE-Step comparison, for a person."""
    head = f"{row['duration_s']:g} s x{row['batch']}: {row['engine']}"
    if row["engine"] == "diffusers":
        return f"{head}: the reference"
    if row["engine"] == "dgx-music":
        same = "identical audio" if row["identical"] else "DIFFERENT audio"
        skipped = f"; compiled DiT not run: {row['compile_skipped']}" if row.get("compile_skipped") else ""
        return f"{head} / diffusers = {row['ratio']:.3f} ({same}){skipped}"
    close = "within tolerance" if row["within_tolerance"] else "OUTSIDE tolerance"
    snr = "inf" if row["snr_db"] is None else row["snr_db"]
    return (
        f"{head} / eager = {row['vs_eager']:.3f}, / diffusers = {row['ratio']:.3f} (max |diff| "
        f"{row['max_abs_diff']:.2e}, SNR {snr} dB: {close}; first call {row['first_call_s']} s)"
    )


def run_compare(args: argparse.Namespace, settings: Settings, model_name: str) -> int:
    from daemon.engine.checkpoints import load_checkpoint
    from daemon.engine.devices import resolve_device, resolve_dtype
    from daemon.ops.decodebench import compare, format_table

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    ckpt = load_checkpoint(model_name, settings, device=device, dtype=dtype)
    rows = compare(
        ckpt.model,
        ckpt.processor,
        args.durations or (4.0, 8.0, 16.0, 30.0),
        args.batch,
        model_name=model_name,
        repeats=args.repeats or 1,
        progress=lambda text: print(text, file=sys.stderr),
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return EXIT_OK


def run_ops(args: argparse.Namespace, settings: Settings, model_name: str) -> int:
    import torch

    from daemon.engine.checkpoints import load_checkpoint
    from daemon.engine.decoding.launches import kernels_problem
    from daemon.engine.devices import resolve_device, resolve_dtype
    from daemon.ops.opcount import count_decode_step

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    if device.type == "cpu" and settings.dtype == "auto":
        # The count stands for the kernels a CUDA graph replays. On the CPU a bfloat16 model attends
        # in float32 (`step.attention_dtype`), which adds conversions CUDA does not have.
        dtype = torch.float32
    # Default: the step a GPU runs wherever Triton imports; `auto` is resolved by the backend itself.
    kernels = args.kernels or ("triton" if kernels_problem(device) is None else "aten")
    ckpt = load_checkpoint(model_name, settings, device=device, dtype=dtype)
    report = count_decode_step(ckpt.model, ckpt.processor, batch=args.batch, kernels=kernels)
    report = {"model": model_name, "device": str(device), "dtype": str(dtype).replace("torch.", ""), **report}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(json.dumps({k: report[k] for k in ("kernels", "ops_per_step", "ops_per_layer", "layers")}))
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    from daemon.engine.model import MusicEngine
    from daemon.ops.bench import DEFAULT_DURATIONS, ProgressBar, exit_code, format_report, run_benchmark

    if args.batch < 1:
        print("dgx-music: --batch must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.compare and args.ops:
        print("dgx-music: give --compare or --ops, not both", file=sys.stderr)
        return EXIT_USAGE
    if args.tiny and args.shape:
        print("dgx-music: give --tiny or --shape, not both", file=sys.stderr)
        return EXIT_USAGE
    shapes = ("turbo", "base") if args.family == "ace-step" else ("small", "medium", "large")
    if args.shape and args.shape not in shapes:
        article = "an" if args.family == "ace-step" else "a"
        print(
            f"dgx-music: --shape {args.shape} is not {article} {args.family} shape ({', '.join(shapes)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.family == "ace-step" and not args.compare:
        print("dgx-music: --family ace-step benchmarks with --compare", file=sys.stderr)
        return EXIT_USAGE
    if args.ops:
        from daemon.engine.decoding.testseam import interpret_triton_without_gpu

        interpret_triton_without_gpu()
    with tempfile.TemporaryDirectory(prefix="dgx-music-bench-") as tmp:
        made = made_model(args, Path(tmp))
        try:
            settings = bench_settings(args, made)
        except ConfigError as exc:
            print(f"dgx-music: {exc}", file=sys.stderr)
            return EXIT_USAGE
        model = made.name if made is not None else (args.model or settings.default_model)
        if args.family == "ace-step":
            try:
                return run_song_compare(args, settings, model)
            except DgxMusicError as exc:
                print(f"dgx-music: bench failed: {exc}", file=sys.stderr)
                return EXIT_USAGE if exc.error_type == ErrorType.UNKNOWN_MODEL else EXIT_FAILED
        if args.compare or args.ops:
            try:
                return (run_ops if args.ops else run_compare)(args, settings, model)
            except DgxMusicError as exc:
                print(f"dgx-music: bench failed: {exc}", file=sys.stderr)
                return EXIT_USAGE if exc.error_type == ErrorType.UNKNOWN_MODEL else EXIT_FAILED
        engine = MusicEngine(settings)
        try:
            print(f"loading model {model}...", file=sys.stderr)
            engine.load_model(model)
            report = run_benchmark(
                engine, args.durations or DEFAULT_DURATIONS, batch=args.batch, progress=ProgressBar()
            )
        except DgxMusicError as exc:
            print(f"dgx-music: bench failed: {exc}", file=sys.stderr)
            return EXIT_USAGE if exc.error_type == ErrorType.UNKNOWN_MODEL else EXIT_FAILED
        finally:
            engine.unload_model()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_report(report))
    return exit_code(report)
