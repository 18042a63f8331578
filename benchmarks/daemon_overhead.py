#!/usr/bin/env python3
"""What the daemon costs on top of the generations it runs.

    python benchmarks/daemon_overhead.py                    # 50 jobs of 1 s, tiny model, CPU
    python benchmarks/daemon_overhead.py --jobs 50 --duration 4 --json

Two measurements of the same 50 generations (same prompts, seeds and sampling):

* in-process: `MusicEngine.generate` called 50 times in a row in this process, the model
  loaded and one untimed generation done first (nothing but generation);
* daemon: `dgx-music serve` as a subprocess with `max_batch: 1` (one job per decode, like the
  in-process calls), ready and warmed by one untimed job; the 50 job files dropped into the
  inbox in a burst; the wall time from the first drop to the 50th sidecar. That includes the
  pickup, the claim, validation, queueing, loudness normalisation, the audio and sidecar
  writes with their fsyncs, and the state files.

The in-process run is done before and after the daemon's (the box may be shared; their mean is
the baseline). Ratio = daemon wall time / baseline; target: <= 1.15. Because a shared
box makes runs minutes apart hard to compare, the daemon's own view is printed as well: its
wall time over the sum of `generate_s` in its sidecars (same run, same load).
`--batched` adds a run with the default `max_batch` (the worker then decodes compatible queued
jobs together, so the burst finishes faster than the one-by-one in-process loop).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from daemon_harness import DaemonProcess, SpoolView, job_yaml, model_dir_or_tiny, write_config  # noqa: E402

TARGET_RATIO = 1.15


def prompt(i: int) -> str:
    return f"overhead probe {i}: warm lo-fi beat with a dusty piano"


def in_process(config: Path, jobs: int, duration: float, threads: int | None) -> tuple[float, float]:
    """Seconds for `jobs` generations with a resident model; also the model load time."""
    import torch

    from daemon.core.config import load_settings
    from daemon.core.messages import GenerationRequest
    from daemon.engine.model import MusicEngine

    if threads:
        torch.set_num_threads(threads)

    settings = load_settings(config)
    engine = MusicEngine(settings)
    t0 = time.perf_counter()
    engine.load_model(settings.default_model)
    load_s = time.perf_counter() - t0
    engine.generate([GenerationRequest(prompt=prompt(-1), duration=duration, seed=12345)])  # warm-up
    t0 = time.perf_counter()
    for i in range(jobs):
        engine.generate([GenerationRequest(prompt=prompt(i), duration=duration, seed=i)])
    wall = time.perf_counter() - t0
    engine.unload_model()
    return wall, load_s


def through_daemon(
    config: Path, spool: Path, log: Path, jobs: int, duration: float, threads: int | None
) -> tuple[float, list[dict]]:
    sp = SpoolView(spool)
    names = [f"ovh-{i:03d}.yaml" for i in range(jobs)]
    env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    with DaemonProcess(config, log, env=env) as daemon:
        daemon.start()
        sp.drop("warmup.yaml", job_yaml(prompt(-1), duration=duration, seed=12345))
        sp.wait_outcome("warmup", 600, alive=daemon)
        texts = [job_yaml(prompt(i), duration=duration, seed=i) for i in range(jobs)]
        t0 = time.perf_counter()
        for name, text in zip(names, texts):
            sp.drop(name, text)
        got = sp.wait_sources(names, 3600, alive=daemon)
        wall = time.perf_counter() - t0
        assert daemon.stop() == 0, daemon.log_tail()
    bodies = [got[n][0] for n in names]
    bad = [b["job_id"] for b in bodies if b["status"] != "completed"]
    if bad:
        raise SystemExit(f"jobs did not complete: {bad}")
    return wall, bodies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--duration", type=float, default=1.0, help="seconds of audio per job")
    parser.add_argument("--model-dir", help="a MusicGen checkpoint (default: a fresh tiny one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch in both runs (OMP_NUM_THREADS for the daemon); on a small "
        "shared box 1 avoids intra-op spinning that makes timings meaningless",
    )
    parser.add_argument("--batched", action="store_true", help="also run the daemon with cross-job batching")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dgx-overhead-") as scratch_name:
        scratch = Path(scratch_name)
        model_dir = model_dir_or_tiny(args.model_dir, scratch)
        config = write_config(
            scratch / "config.yaml",
            scratch / "spool",
            model_dir,
            device=args.device,
            rescan_interval_s=600,
            max_batch=1,
        )
        before, load_s = in_process(config, args.jobs, args.duration, args.threads)
        daemon_wall, bodies = through_daemon(
            config, scratch / "spool", scratch / "daemon.log", args.jobs, args.duration, args.threads
        )
        after, _ = in_process(config, args.jobs, args.duration, args.threads)
        batched_wall = None
        if args.batched:
            config_b = write_config(
                scratch / "config-b.yaml",
                scratch / "spool-b",
                model_dir,
                device=args.device,
                rescan_interval_s=600,
            )
            batched_wall, _ = through_daemon(
                config_b,
                scratch / "spool-b",
                scratch / "daemon-b.log",
                args.jobs,
                args.duration,
                args.threads,
            )

    baseline = (before + after) / 2
    timings = [b["timings"] for b in bodies]
    gen_sum = sum(t["generate_s"] for t in timings)
    report = {
        "jobs": args.jobs,
        "duration_s": args.duration,
        "device": bodies[0]["model"]["device"],
        "in_process_s": {
            "before": round(before, 3),
            "after": round(after, 3),
            "baseline": round(baseline, 3),
        },
        "daemon_wall_s": round(daemon_wall, 3),
        "ratio": round(daemon_wall / baseline, 3),
        "overhead_per_job_ms": round((daemon_wall - baseline) / args.jobs * 1000, 1),
        "daemon_wall_over_its_generate": round(daemon_wall / gen_sum, 3),
        "daemon_sidecar_sums_s": {
            "generate": round(gen_sum, 3),
            "postprocess": round(sum(t["postprocess_s"] for t in timings), 3),
        },
        "median_queue_s": round(statistics.median(t["queue_s"] for t in timings), 3),
        "model_load_s": round(load_s, 2),
        "target_ratio": TARGET_RATIO,
    }
    if batched_wall is not None:
        report["batched_daemon_wall_s"] = round(batched_wall, 3)
        report["batched_ratio"] = round(batched_wall / baseline, 3)
    report["meets_target"] = report["ratio"] <= TARGET_RATIO
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        r = report
        print(
            f"daemon overhead: {args.jobs} jobs x {args.duration:g} s on {r['device']} (daemon max_batch 1)"
        )
        print(
            f"  in-process generate    {before:8.2f} s before, {after:.2f} s after "
            f"(baseline {baseline:.2f} s)"
        )
        print(f"  through the daemon     {daemon_wall:8.2f} s (drop of the first -> sidecar of the last)")
        print(
            f"    of which generate    {r['daemon_sidecar_sums_s']['generate']:8.2f} s, postprocess "
            f"{r['daemon_sidecar_sums_s']['postprocess']:.2f} s (sidecar timings)"
        )
        print(f"  ratio                  {r['ratio']:8.3f}  ({r['overhead_per_job_ms']:+.1f} ms per job)")
        print(f"  daemon wall / its own generate_s sum  {r['daemon_wall_over_its_generate']:.3f}")
        if batched_wall is not None:
            print(
                f"  batched daemon         {batched_wall:8.2f} s  "
                f"(ratio {r['batched_ratio']:.3f} vs one-by-one in-process)"
            )
        verdict = "meets" if r["meets_target"] else "MISSES"
        print(f"  target <= {TARGET_RATIO}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
