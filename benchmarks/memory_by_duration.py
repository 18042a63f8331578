#!/usr/bin/env python3
"""A whole job's peak memory by duration, through the daemon, at musicgen-small's shape.

    .venv/bin/python benchmarks/memory_by_duration.py                      # 30 s and 300 s, count 8
    .venv/bin/python benchmarks/memory_by_duration.py --durations 30 300 --count 8 --layers 2 --repeats 3

A checkpoint with musicgen-small's shape and random weights is built offline (`dgx-music model
init-random --shape small`: EnCodec 32 kHz, t5-base, a decoder 1024 wide). For each duration a
fresh `dgx-music serve` (CPU) loads it, runs one short job to warm up, and then runs the measured
job (`count` variations): the daemon's resident set before that job is "the model" (the resident
model and a warmed daemon), and the job's peak is how far the daemon's high-water mark rose above
it (Linux VmHWM, restarted from the current size through /proc/PID/clear_refs just before the
job is dropped): the decode, the codec turning codes into audio window by window, loudness,
encoding, analysis and the sidecar, everything the job makes the daemon hold. Beside it, the
largest anonymous and file-backed resident sets sampled during the job (RssAnon, RssFile): the
first is what the job allocated, the second library pages and maps touched for the first time.

Each duration runs `--repeats` times, a fresh daemon each, alternating durations; the figures
compared are the medians. Every dgx-music daemon fixes glibc's mmap threshold at start
(daemon/service/allocator.py; the line it logs is printed): with glibc's sliding default the heap
kept a varying part of the codec's freed activations, and runs of one job differed by up to 60 %.

`--layers` keeps musicgen-small's widths with fewer decoder layers (24 in the real model): the
decoder's memory is its weights and its key/value cache, sized by one 30 s window whatever the
duration, so its depth changes the model's size and the job's cache, not how the job grows with
duration. On the CPU the cache is part of the job's peak, not of the model: a job's rows decode
together, 16 rows (8 variations with guidance) x 1536 positions, 192 MiB a layer in float32, so at
24 layers the cache alone is 4.5 GiB, past the 2 GiB the target allows above the model (on CUDA
each call decodes one variation, two rows with guidance, by default): the target is checked at the
depth given. What grows with the piece is the codes (a few kB) and the audio (the codec, loudness,
encoding and analysis stages), which run at the real shape. The default of 2 layers keeps a 300 s
x 8 job (15,000 decoding steps of 16 rows) within minutes on a small CPU; `--layers 24` is the
whole model.

Targets: the job's peak within the model + 2 GiB (every run); 30 s and 300 s within 10 % of each
other (the medians of the peak above the model; the ratio of the whole job's peaks, model included,
is printed beside it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
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


def _status_kb(pid: int, *keys: str) -> dict[str, int]:
    """Fields of /proc/PID/status in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in keys:
            out[key] = int(line.split()[1])
    if missing := set(keys) - set(out):
        raise RuntimeError(f"/proc/{pid}/status has no {', '.join(sorted(missing))}")
    return out


class _Sampler(threading.Thread):
    """The largest anonymous and file-backed resident sets of a process, sampled every `every` s.

    VmHWM is exact but counts every page: a library page touched for the first time or heap that
    the allocator keeps after a free counts as much as a tensor. RssAnon alone is the memory the
    job allocated (and the allocator kept); a peak shorter than the interval can slip between samples.
    """

    def __init__(self, pid: int, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak = {key: 0 for key in _SAMPLED}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                now = _status_kb(self.pid, *_SAMPLED)
            except (OSError, RuntimeError):
                return
            self.peak = {key: max(self.peak[key], now[key]) for key in _SAMPLED}
            self._done.wait(self.every)

    def stop(self) -> dict[str, int]:
        self._done.set()
        self.join()
        return self.peak


_SAMPLED = ("RssAnon", "RssFile")


def one(
    model: Path, scratch: Path, duration: float, count: int, timeout: float, tag: str
) -> tuple[dict[str, float], str]:
    """One run's figures, and what the daemon logged of its malloc setting."""
    spool = scratch / f"spool-{tag}"
    config = write_config(
        scratch / f"config-{tag}.yaml",
        spool,
        model,
        max_duration=max(600.0, duration),
        max_batch=max(8, count),
        job_timeout_s=timeout,
        max_memory_gb=64,
    )
    sp = SpoolView(spool)
    with DaemonProcess(config, scratch / f"daemon-{tag}.log") as daemon:
        daemon.start(timeout=600)
        malloc = next((x.partition("malloc: ")[2] for x in daemon.log().splitlines() if "malloc: " in x), "?")
        sp.drop("warm.yaml", job_yaml("warm up the daemon", duration=1.0, seed=1))
        sp.wait_outcome("warm", timeout=600)
        time.sleep(1.0)  # the page and metrics written after the warm-up job
        Path(f"/proc/{daemon.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        start = _status_kb(daemon.pid, "VmRSS", *_SAMPLED)
        sampler = _Sampler(daemon.pid)
        sampler.start()
        t0 = time.monotonic()
        sp.drop(
            "long.yaml",
            job_yaml("a long lo-fi piece for the memory benchmark", duration=duration, count=count, seed=7),
        )
        body = sp.wait_outcome("long", timeout=timeout)
        wall = time.monotonic() - t0
        peak_kb = _status_kb(daemon.pid, "VmHWM")["VmHWM"]
        sampled = sampler.stop()
    if body is None or body.get("status", "completed") != "completed" or "outputs" not in body:
        raise RuntimeError(f"the {duration:g} s job did not complete: {json.dumps(body)[:2000]}")
    figures = {
        "duration_s": duration,
        "count": count,
        "model_bytes": start["VmRSS"] * 1024.0,
        "peak_above_model_bytes": max(0, peak_kb - start["VmRSS"]) * 1024.0,
        "total_peak_bytes": max(start["VmRSS"], peak_kb) * 1024.0,
        "anon_peak_above_model_bytes": max(0, sampled["RssAnon"] - start["RssAnon"]) * 1024.0,
        "file_peak_above_model_bytes": max(0, sampled["RssFile"] - start["RssFile"]) * 1024.0,
        "sidecar_peak_memory_bytes": float(body["peak_memory_bytes"]),
        "audio_bytes": float(sum(o["frames"] * o["channels"] * 4 for o in body["outputs"])),
        "wall_s": wall,
    }
    return figures, malloc


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _spread(rows: list[dict[str, float]], key: str) -> str:
    """Median (lowest-highest) in MiB."""
    values = [r[key] / MIB for r in rows]
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def _by_duration(rows: list[dict[str, float]]) -> dict[float, list[dict[str, float]]]:
    groups: dict[float, list[dict[str, float]]] = {}
    for r in rows:
        groups.setdefault(r["duration_s"], []).append(r)
    return groups


def report(rows: list[dict[str, float]], layers: int, malloc: str) -> bool:
    """Print every run, the medians per duration and the targets; True when they are met."""
    print(
        f"musicgen-small's shape (decoder 1024 wide, {layers} of its 24 layers; EnCodec 32 kHz, "
        f"t5-base), random weights, CPU, a fresh daemon per run; malloc: {malloc}"
    )
    print(
        f"{'duration':>9} {'count':>5} {'audio MiB':>10} {'model MiB':>10} {'peak above model MiB':>21} "
        f"{'anon':>6} {'file':>6} {'engine peak MiB':>16} {'wall s':>7}"
    )
    for r in rows:
        print(
            f"{r['duration_s']:>8.0f}s {r['count']:>5} {r['audio_bytes'] / MIB:>10.0f} "
            f"{r['model_bytes'] / MIB:>10.0f} {r['peak_above_model_bytes'] / MIB:>21.0f} "
            f"{r['anon_peak_above_model_bytes'] / MIB:>6.0f} {r['file_peak_above_model_bytes'] / MIB:>6.0f} "
            f"{r['sidecar_peak_memory_bytes'] / MIB:>16.0f} {r['wall_s']:>7.0f}"
        )
    print(
        "peak above model: VmHWM's rise during the job; anon / file: the largest sampled RssAnon / "
        "RssFile above the warmed daemon's"
    )
    groups = _by_duration(rows)
    for duration, group in groups.items():
        print(
            f"{duration:>6.0f} s x{group[0]['count']}, median (lowest-highest) of {len(group)} run(s), MiB: "
            f"model {_spread(group, 'model_bytes')}, "
            f"peak above model {_spread(group, 'peak_above_model_bytes')}, "
            f"anon {_spread(group, 'anon_peak_above_model_bytes')}, "
            f"whole job's peak (model + job) {_spread(group, 'total_peak_bytes')}"
        )
    worst = max(r["peak_above_model_bytes"] for r in rows)
    print(f"largest peak above the model: {worst / GIB:.2f} GiB (target: at most 2 GiB)")
    ok = worst <= TARGET_ABOVE_MODEL
    if len(groups) >= 2:
        (d0, first), (d1, last) = list(groups.items())[0], list(groups.items())[-1]
        ratios = {
            key: _median(last, key) / max(1.0, _median(first, key))
            for key in ("peak_above_model_bytes", "anon_peak_above_model_bytes", "total_peak_bytes")
        }
        print(
            f"{d1:.0f} s / {d0:.0f} s, ratio of medians: "
            f"peak above model {ratios['peak_above_model_bytes']:.2f} "
            f"(target: within {TARGET_RATIO:.0%}); anon {ratios['anon_peak_above_model_bytes']:.2f}; "
            f"whole job's peak {ratios['total_peak_bytes']:.2f}"
        )
        ok = ok and abs(ratios["peak_above_model_bytes"] - 1.0) <= TARGET_RATIO
    print("targets met" if ok else "targets NOT met")
    return ok


def _progress(row: dict[str, float], n: int, repeats: int) -> None:
    """One line on stderr per run: a 300 s x 8 run takes many minutes."""
    print(
        f"run {n + 1}/{repeats}, {row['duration_s']:g} s x{row['count']:g}: "
        f"{row['peak_above_model_bytes'] / MIB:.0f} MiB above the model in {row['wall_s']:.0f} s",
        file=sys.stderr,
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--durations", type=float, nargs="+", default=[30.0, 300.0])
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--layers", type=int, default=2, help="decoder layers (musicgen-small has 24)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per duration, each in a fresh daemon")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds a job may take")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from daemon.ops.tinymodel import init_random

    malloc = "?"
    with tempfile.TemporaryDirectory(prefix="dgx-membench-") as tmp:
        scratch = Path(tmp)
        model = init_random(scratch / "model", "small", layers=args.layers)
        # Durations alternate within each repeat, so load from other work on the box falls on both.
        rows = []
        for n in range(args.repeats):
            for d in args.durations:
                row, malloc = one(model, scratch, d, args.count, args.timeout, f"{d:g}-{n}")
                rows.append(row)
                _progress(row, n, args.repeats)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    return 0 if report(rows, args.layers, malloc) else 1


if __name__ == "__main__":
    sys.exit(main())
