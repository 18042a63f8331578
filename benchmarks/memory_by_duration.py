#!/usr/bin/env python3
"""A whole job's peak memory by duration, through the daemon, at musicgen-small's shape.

    .venv/bin/python benchmarks/memory_by_duration.py                      # 30 s and 300 s, count 8
    .venv/bin/python benchmarks/memory_by_duration.py --durations 30 300 --count 8 --layers 2

A checkpoint with musicgen-small's shape and random weights is built offline (`dgx-music model
init-random --shape small`: EnCodec 32 kHz, t5-base, a decoder 1024 wide). For each duration a
fresh `dgx-music serve` (CPU) loads it, runs one short job to warm up, and then runs the measured
job (`count` variations): the daemon's resident set before that job is "the model" (the resident
model and a warmed daemon), and the job's peak is how far the daemon's high-water mark rose above
it (Linux VmHWM, restarted from the current size through /proc/PID/clear_refs just before the
job is dropped): the decode, the codec turning codes into audio window by window, loudness,
encoding, analysis and the sidecar, everything the job makes the daemon hold.

`--layers` keeps musicgen-small's widths with fewer decoder layers (24 in the real model): the
decoder's memory is its weights and its key/value cache, sized by one 30 s window whatever the
duration, so its depth changes the model's size, not how the job grows with duration. What grows
with the piece is the codes (a few kB) and the audio (the codec, loudness, encoding and analysis
stages), which run at the real shape. The default of 2 layers keeps a 300 s x 8 job (15,000
decoding steps of 16 rows) within minutes on a small CPU; `--layers 24` is the whole model.

Targets: the job's peak within the model + 2 GiB; 30 s and 300 s within 10 % of each other.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from daemon_harness import DaemonProcess, SpoolView, job_yaml, write_config  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
TARGET_ABOVE_MODEL = 2 * GIB
TARGET_RATIO = 0.10


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {key}")


def one(model: Path, scratch: Path, duration: float, count: int, timeout: float) -> dict[str, float]:
    spool = scratch / f"spool-{duration:g}"
    config = write_config(
        scratch / f"config-{duration:g}.yaml",
        spool,
        model,
        max_duration=max(600.0, duration),
        max_batch=max(8, count),
        job_timeout_s=timeout,
        max_memory_gb=64,
    )
    sp = SpoolView(spool)
    with DaemonProcess(config, scratch / f"daemon-{duration:g}.log") as daemon:
        daemon.start(timeout=600)
        sp.drop("warm.yaml", job_yaml("warm up the daemon", duration=1.0, seed=1))
        sp.wait_outcome("warm", timeout=600)
        time.sleep(1.0)  # the page and metrics written after the warm-up job
        model_kb = _status_kb(daemon.pid, "VmRSS")
        Path(f"/proc/{daemon.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        start_kb = _status_kb(daemon.pid, "VmRSS")
        t0 = time.monotonic()
        sp.drop(
            "long.yaml",
            job_yaml("a long lo-fi piece for the memory benchmark", duration=duration, count=count, seed=7),
        )
        body = sp.wait_outcome("long", timeout=timeout)
        wall = time.monotonic() - t0
        peak_kb = _status_kb(daemon.pid, "VmHWM")
    if body is None or body.get("status", "completed") != "completed" or "outputs" not in body:
        raise RuntimeError(f"the {duration:g} s job did not complete: {json.dumps(body)[:2000]}")
    return {
        "duration_s": duration,
        "count": count,
        "model_bytes": model_kb * 1024.0,
        "peak_above_model_bytes": max(0, peak_kb - start_kb) * 1024.0,
        "sidecar_peak_memory_bytes": float(body["peak_memory_bytes"]),
        "audio_bytes": float(sum(o["frames"] * o["channels"] * 4 for o in body["outputs"])),
        "wall_s": wall,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--durations", type=float, nargs="+", default=[30.0, 300.0])
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--layers", type=int, default=2, help="decoder layers (musicgen-small has 24)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds a job may take")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from daemon.ops.tinymodel import init_random

    with tempfile.TemporaryDirectory(prefix="dgx-membench-") as tmp:
        scratch = Path(tmp)
        model = init_random(scratch / "model", "small", layers=args.layers)
        rows = [one(model, scratch, d, args.count, args.timeout) for d in args.durations]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"musicgen-small's shape (decoder 1024 wide, {args.layers} of its 24 layers; EnCodec 32 kHz, "
        "t5-base), random weights, CPU, one daemon per duration"
    )
    print(
        f"{'duration':>9} {'count':>5} {'audio MiB':>10} {'model MiB':>10} {'job peak above model MiB':>25} "
        f"{'engine peak MiB':>16} {'wall s':>7}"
    )
    for r in rows:
        print(
            f"{r['duration_s']:>8.0f}s {r['count']:>5} {r['audio_bytes'] / MIB:>10.0f} "
            f"{r['model_bytes'] / MIB:>10.0f} {r['peak_above_model_bytes'] / MIB:>25.0f} "
            f"{r['sidecar_peak_memory_bytes'] / MIB:>16.0f} {r['wall_s']:>7.0f}"
        )
    worst = max(r["peak_above_model_bytes"] for r in rows)
    print(f"largest peak above the model: {worst / GIB:.2f} GiB (target: at most 2 GiB)")
    ok = worst <= TARGET_ABOVE_MODEL
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        ratio = last["peak_above_model_bytes"] / max(1.0, first["peak_above_model_bytes"])
        print(
            f"peak ratio {last['duration_s']:.0f} s / {first['duration_s']:.0f} s: {ratio:.2f} "
            f"(target: within {TARGET_RATIO:.0%})"
        )
        ok = ok and abs(ratio - 1.0) <= TARGET_RATIO
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
