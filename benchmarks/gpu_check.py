#!/usr/bin/env python3
"""The first thing to run on a GPU box: every device-dependent part of dgx-music, measured, in one go.

    python benchmarks/gpu_check.py --out DIR                    # on the GPU (< 8 min on an H100/H200)
    python benchmarks/gpu_check.py --out DIR --device cpu --quick   # the same sections, tiny model, CPU

Sections, in order of value, so that a run cut short still has the headline figures (each records
its own error and the run goes on; results.json is rewritten after every section): doctor
(`dgx-music doctor --json`), bandwidth (a device copy: the memory bandwidth every later figure is
a share of), compare (transformers `generate` against the dgx loop, musicgen-small shape, 16 s at
batch 1 and 8), profile (capture time, ms per step, kernels per step, delay pattern, T5 and EnCodec
times, peak memory), shapes (medium and large random weights at the real shapes, 8 s), daemon (one
job through `serve` + `submit --wait` on a temporary spool), acestep (ACE-Step 1.5 at the real turbo
shape, random weights: the daemon's render against diffusers' AceStepPipeline call, 60 s and 180 s
songs at batch 1 and 4, and the render with the DiT under torch.compile against the eager one),
gpu_tests (`pytest -m gpu`). Timed figures are the median of `REPEATS` runs. Writes
DIR/results.json and DIR/summary.md; exit 0 when every section passed, 1 otherwise.
docs/gpu.md explains the figures and the targets.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# Timed runs per figure: the median is reported (one run on a shared or cold machine is noise).
REPEATS = 3


def _cli(*args: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`dgx-music ARGS` through this interpreter (the checkout's code when run from it)."""
    return subprocess.run(
        [PY, "-m", "daemon", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def _tail(text: str, n: int = 2000) -> str:
    return text[-n:]


class Plan:
    """What to run: full sizes on the device, or the tiny model and short clips (--quick)."""

    def __init__(self, device: str, quick: bool, work: Path) -> None:
        self.device, self.quick, self.work = device, quick, work
        self.compare_durations = "1" if quick else "16"
        self.compare_batches = (1, 2) if quick else (1, 8)
        self.shape_duration = "1" if quick else "8"
        self.shapes = ("tiny",) if quick else ("medium", "large")
        self.timeout = 240.0 if quick else 420.0
        # The device's measured copy bandwidth (bytes/s), once the bandwidth section has run.
        self.bandwidth: float | None = None

    def model_args(self, shape: str) -> list[str]:
        return ["--tiny"] if shape == "tiny" else ["--shape", shape]


# ---------------------------------------------------------------- sections


def section_doctor(plan: Plan) -> dict[str, Any]:
    proc = _cli("doctor", "--json", timeout=120)
    checks = json.loads(proc.stdout)
    failed = [c["name"] for c in checks if c.get("status") == "FAIL"]
    # Without CUDA the GPU checks fail by design; on CPU that is information, not a failure.
    ok = not failed or plan.device == "cpu"
    return {"ok": ok, "exit_code": proc.returncode, "failed_checks": failed, "checks": checks}


def section_gpu_tests(plan: Plan) -> dict[str, Any]:
    """`pytest -m gpu tests/`: every test marked gpu, wherever it lives. On a GPU the section passes
    only when every collected test passed (a skip is a test that did not run); on `--device cpu`
    only when every one of them skipped for want of CUDA and none failed."""
    report = plan.work / "gpu-tests.xml"
    proc = subprocess.run(
        [
            PY,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            "tests/",
        ],
        capture_output=True,
        text=True,
        timeout=plan.timeout,
        cwd=ROOT,
    )
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = _junit_counts(report)
    collected, passed = counts["collected"], counts["passed"]
    if plan.device == "cpu":
        ok = collected > 0 and counts["failed"] == 0 and counts["skipped"] == collected
        ok = ok and all(r.startswith("needs CUDA") for r in counts["skip_reasons"])
    else:
        ok = collected > 0 and passed == collected
    return {
        "ok": ok,
        "exit_code": proc.returncode,
        **counts,
        "summary": last,
        "output_tail": _tail(proc.stdout),
    }


def _junit_counts(report: Path) -> dict[str, Any]:
    """collected / passed / failed / skipped and the distinct skip reasons of a JUnit XML report."""
    import xml.etree.ElementTree as ET

    if not report.exists():
        return {"collected": 0, "passed": 0, "failed": 0, "skipped": 0, "skip_reasons": []}
    cases = list(ET.parse(report).getroot().iter("testcase"))
    failed = sum(1 for c in cases if c.find("failure") is not None or c.find("error") is not None)
    skips = [c.find("skipped") for c in cases]
    reasons = sorted({(s.get("message") or "").removeprefix("Skipped: ") for s in skips if s is not None})
    skipped = sum(1 for s in skips if s is not None)
    return {
        "collected": len(cases),
        "passed": len(cases) - failed - skipped,
        "failed": failed,
        "skipped": skipped,
        "skip_reasons": reasons,
    }


def _compare(
    plan: Plan, shape: str, duration: str, batch: int, extra: list[str] | None = None
) -> list[dict[str, Any]]:
    args = [
        "bench",
        "--compare",
        "--json",
        "--device",
        plan.device,
        "--durations",
        duration,
        "--batch",
        str(batch),
        "--repeats",
        str(REPEATS),
        *plan.model_args(shape),
        *(extra or []),
    ]
    proc = _cli(*args, timeout=plan.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bench --compare exited {proc.returncode}: {_tail(proc.stderr, 800)}")
    return json.loads(proc.stdout)


def _speedups(rows: list[dict[str, Any]], plan: Plan, shape: str) -> dict[str, Any]:
    """The figures of one bench --compare run: medians of the timed runs, and the share of the
    measured bandwidth the dgx loop's steps reach."""
    by = {r["engine"]: r for r in rows}
    ours, ref = by.get("dgx-music"), by.get("transformers")
    out: dict[str, Any] = {"rows": rows}
    if ours and ref:
        gen_s, ref_s = ours["gen_s_median"], ref["gen_s_median"]
        out.update(
            dgx_gen_s=gen_s,
            transformers_gen_s=ref_s,
            ratio=round(gen_s / ref_s, 3) if ref_s else None,
            speedup=round(ref_s / gen_s, 2) if gen_s else None,
            repeats=len(ours["gen_s_runs"]),
            dgx_ms_per_step=ours["ms_per_step"],
            dgx_audio_s_per_s=round(ours["batch"] * ours["duration_s"] / gen_s, 3) if gen_s else None,
            dgx_peak_memory_bytes=ours["peak_memory_bytes"],
        )
        itemsize = 4 if ours["dtype"] == "float32" else 2
        step = step_bytes(shape, itemsize, rows=2 * ours["batch"], positions=ours["steps"] // 2)
        out.update(_share(step, ours["ms_per_step"], plan))
    return out


def step_bytes(shape: str, itemsize: int, *, rows: int, positions: int, text: int = 32) -> int:
    """Bytes one decode step must read at least: every weight it multiplies by (self-attention
    q/k/v/o, cross-attention q/o, the MLP, the heads), the self-attention cache of `rows` rows up to
    `positions`, and the text's cross-attention keys and values."""
    from daemon.ops.tinymodel import decoder_dims

    d = decoder_dims(shape)
    e, layers = d["hidden"], d["layers"]
    weights = layers * (6 * e * e + 2 * e * d["ffn"]) + d["codebooks"] * d["vocab"] * e
    caches = layers * 2 * rows * (positions + text) * e
    return (weights + caches) * itemsize


def _share(nbytes: int, ms_per_step: float, plan: Plan) -> dict[str, Any]:
    """`nbytes` read in `ms_per_step`, as bytes/s and as a share of the measured copy bandwidth."""
    if not ms_per_step:
        return {}
    rate = nbytes / (ms_per_step / 1000)
    out: dict[str, Any] = {"step_bytes": nbytes, "step_bytes_per_s": round(rate)}
    if plan.bandwidth:
        out["bandwidth_share"] = float(f"{rate / plan.bandwidth:.3g}")  # three significant digits
    return out


def section_bandwidth(plan: Plan) -> dict[str, Any]:
    """The device's memory bandwidth, measured: a large copy (read + write), timed `REPEATS` + 2
    times after a warm-up, the median kept. On a CPU the same code measures the CPU's memory."""
    import torch

    from daemon.engine.devices import resolve_device

    device = resolve_device(plan.device)
    cuda = device.type == "cuda"
    nbytes = (64 if plan.quick else (1024 if cuda else 256)) * 2**20
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for attempt in range(REPEATS + 3):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        if cuda:
            torch.cuda.synchronize(device)
        if attempt:  # the first copy pays page faults and lazy initialisation
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    plan.bandwidth = 2 * nbytes / seconds
    return {
        "ok": bool(torch.equal(dst[:1024], src[:1024])),
        "device": str(device),
        "bytes": nbytes,
        "copy_s_runs": [round(t, 6) for t in times],
        "bytes_per_s": round(plan.bandwidth),
        "gb_per_s": round(plan.bandwidth / 1e9, 1),
    }


def section_compare(plan: Plan) -> dict[str, Any]:
    shape = "tiny" if plan.quick else "small"
    runs = {
        f"batch{b}": _speedups(_compare(plan, shape, plan.compare_durations, b), plan, shape)
        for b in plan.compare_batches
    }
    return {"ok": True, "shape": shape, "duration_s": float(plan.compare_durations), **runs}


def section_acestep(plan: Plan) -> dict[str, Any]:
    """ACE-Step 1.5 at the real turbo shape (random weights built in memory; --quick: the tiny
    pipeline): the daemon's render against diffusers' own AceStepPipeline call, a 60 s and a 180 s
    song, batch 1 and 4, with whether both made the same audio; and the render with the DiT under
    torch.compile (the daemon's `compile: auto` on CUDA) against the eager one: its time, the
    first call's (the compile), and its audio's distance from the eager render's."""
    durations = "1" if plan.quick else "60,180"
    model = ["--tiny"] if plan.quick else ["--shape", "turbo"]
    out: dict[str, Any] = {"ok": True, "shape": "tiny" if plan.quick else "turbo"}
    for batch in (1, 2) if plan.quick else (1, 4):
        args = ["bench", "--compare", "--family", "ace-step", "--json", "--device", plan.device]
        args += ["--repeats", str(REPEATS), "--compile", "auto"]
        # The compiled engine adds its runs and, once per process, the DiT's compile.
        timeout = plan.timeout * (1 if plan.quick else 1.5)
        proc = _cli(*args, "--durations", durations, "--batch", str(batch), *model, timeout=timeout)
        if proc.returncode not in (0, 1) or not proc.stdout.strip():
            raise RuntimeError(
                f"bench --compare --family ace-step exited {proc.returncode}: {_tail(proc.stderr, 800)}"
            )
        rows = json.loads(proc.stdout)
        for row in rows:
            if row["engine"] != "dgx-music":
                continue
            same = [r for r in rows if r["duration_s"] == row["duration_s"]]
            ref = next(r for r in same if r["engine"] == "diffusers")
            fig = out[f"{row['duration_s']:g}s_batch{batch}"] = {
                "dgx_gen_s": row["gen_s_median"],
                "diffusers_gen_s": ref["gen_s_median"],
                "ratio": round(row["gen_s_median"] / ref["gen_s_median"], 3),
                "repeats": len(row["gen_s_runs"]),
                "identical": row["identical"],
                "dgx_audio_s_per_s": row["audio_s_per_s"],
                "dgx_peak_memory_bytes": row["peak_memory_bytes"],
                **_compiled_figures(row, same),
            }
            out["ok"] = out["ok"] and bool(row["identical"]) and fig.get("compiled_within_tolerance", True)
    return out


def _compiled_figures(eager: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The compiled DiT's figures beside the eager render's, or why it did not run."""
    compiled = next((r for r in rows if r["engine"] == "dgx-compiled"), None)
    if compiled is None:
        return {"compiled_skipped": eager.get("compile_skipped", "not run")}
    return {
        "compiled_gen_s": compiled["gen_s_median"],
        "compiled_vs_eager": round(compiled["gen_s_median"] / eager["gen_s_median"], 3),
        "compiled_first_call_s": compiled["first_call_s"],
        "compiled_max_abs_diff": compiled["max_abs_diff"],
        "compiled_snr_db": compiled["snr_db"],
        "compiled_within_tolerance": compiled["within_tolerance"],
        "compiled_peak_memory_bytes": compiled["peak_memory_bytes"],
    }


def _build(shape: str, directory: str) -> str:
    from daemon.ops.tinymodel import init_random, init_tiny

    if shape == "tiny":
        return str(init_tiny(Path(directory)))
    return str(init_random(Path(directory), shape, dtype="float16"))  # type: ignore[arg-type]


def section_shapes(plan: Plan) -> dict[str, Any]:
    # Building large random weights takes a while on the CPU: all shapes are built at once, in
    # separate processes, then benchmarked one after the other on the device.
    dirs = {shape: plan.work / f"model-{shape}" for shape in plan.shapes}
    # Spawned, not forked: the profile section ran torch's OpenMP threads in this process, and a
    # forked child waits forever at the first parallel region on a thread pool it does not have.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(dirs), mp_context=spawn) as pool:
        futures = {shape: pool.submit(_build, shape, str(d)) for shape, d in dirs.items()}
        built = {shape: Path(f.result()) for shape, f in futures.items()}
    out: dict[str, Any] = {"ok": True, "duration_s": float(plan.shape_duration)}
    for shape, directory in built.items():
        try:
            cfg = _config(plan, plan.work / f"cfg-{shape}", {shape: directory}, shape)
            rows = _compare_config(plan, cfg, shape)
            out[shape] = {**_speedups(rows, plan, shape), **_other_kernels(plan, cfg, shape)}
        except Exception as exc:
            out[shape] = {"error": f"{type(exc).__name__}: {exc}"}
            out["ok"] = False
    return out


def _compare_config(plan: Plan, cfg: Path, model: str) -> list[dict[str, Any]]:
    proc = _cli(
        "bench",
        "--compare",
        "--json",
        "--config",
        str(cfg),
        "--model",
        model,
        "--device",
        plan.device,
        "--durations",
        plan.shape_duration,
        "--repeats",
        str(REPEATS),
        timeout=plan.timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench --compare exited {proc.returncode}: {_tail(proc.stderr, 800)}")
    return json.loads(proc.stdout)


def _other_kernels(plan: Plan, cfg: Path, model: str) -> dict[str, Any]:
    """The same clip decoded on the kernels `kernels: auto` did not pick (Triton's fused ones or
    plain ATen ops), so each shape shows whether auto's rule (Triton on CUDA whenever it passes its
    load check) is the faster choice there."""
    if not plan.device.startswith("cuda"):
        return {"kernels_compared": "on CUDA only (the CPU interprets the Triton kernels)"}
    runs = {}
    for kernels in ("triton", "aten"):
        proc = _cli(
            "bench", "--json", "--config", str(cfg), "--model", model, "--device", plan.device,
            "--durations", plan.shape_duration, "--kernels", kernels, timeout=plan.timeout,
        )  # fmt: skip
        if proc.returncode != 0:
            return {f"{kernels}_error": _tail(proc.stderr, 400)}
        report = json.loads(proc.stdout)
        runs[report["model"]["setup"]["kernels"]] = report["rows"][0]["ms_per_step"]
    out: dict[str, Any] = {f"{k}_ms_per_step": v for k, v in runs.items()}
    if "triton" in runs and "aten" in runs:
        out["triton_over_aten"] = round(runs["triton"] / runs["aten"], 3)
    return out


def _config(plan: Plan, spool: Path, models: dict[str, Path], default: str) -> Path:
    spool.mkdir(parents=True, exist_ok=True)
    lines = [f"spool: {json.dumps(str(spool))}", "models:"]
    lines += [f"  {name}: {{path: {json.dumps(str(path))}}}" for name, path in models.items()]
    lines += [f"default_model: {default}", f"device: {plan.device}", "settle_s: 0.1", "rescan_interval_s: 1"]
    cfg = spool / "config.yaml"
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cfg


def section_profile(plan: Plan) -> dict[str, Any]:
    import torch

    from daemon.engine.decoding.codec import codes_to_audio, frame_rate
    from daemon.engine.decoding.dgx import DgxBackend
    from daemon.engine.decoding.parts import decode_lengths, delay_pattern, encode_text, model_parts
    from daemon.engine.decoding.testseam import GRAPH_SHAPED, run_steps
    from daemon.engine.devices import resolve_device, resolve_dtype
    from daemon.ops.decodebench import _request

    shape = "tiny" if plan.quick else "small"
    directory = Path(_build(shape, str(plan.work / f"profile-{shape}")))
    device = resolve_device(plan.device)
    dtype = resolve_dtype("auto", device)
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    from daemon.engine.checkpoints import codec_in_float32

    processor = AutoProcessor.from_pretrained(directory)
    model = MusicgenForConditionalGeneration.from_pretrained(directory, dtype=dtype).to(device).eval()
    codec_in_float32(model)
    seconds = 1.0 if plan.quick else 16.0
    frames = round(seconds * frame_rate(model))
    req = _request(processor, model, 1, frames, 3.0, False, 0)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        sync()
        t0 = time.perf_counter()
        value = fn()
        sync()
        return time.perf_counter() - t0, value

    def median_timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        runs = [timed(fn) for _ in range(REPEATS)]
        return statistics.median(t for t, _ in runs), runs[-1][1]

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    backend = DgxBackend()
    parts = model_parts(model)
    _, total_len = decode_lengths(parts, 0, frames)
    steps = total_len - 1
    with torch.inference_mode():
        first_s, _ = timed(lambda: backend.decode(model, req))
        warm_s, codes = median_timed(lambda: backend.decode(model, req))
        t5_s, _ = timed(lambda: encode_text(parts, req, True))
        pattern_s, _ = timed(lambda: delay_pattern(parts, 1, None, total_len))
        codec_s, _ = timed(lambda: codes_to_audio(model, codes))
        kernels = _kernels_per_step(lambda: backend.decode(model, req), steps, cuda)
        peak = int(torch.cuda.max_memory_allocated(device)) if cuda else _rss_peak()
        # The price of batch invariance (fixed rows and text length) at batch 1, against the same
        # decode padded only to a power of two. On CUDA the backend above is the invariant one (auto);
        # on the CPU both run the bucket path uncaptured (graph-shaped steps).
        invariant_s = warm_s
        if not cuda:
            fixed = run_steps(DgxBackend(batch_invariant="on"), GRAPH_SHAPED)
            fixed.decode(model, req)
            invariant_s, _ = median_timed(lambda: fixed.decode(model, req))
        loose = DgxBackend(batch_invariant="off")
        if not cuda:
            run_steps(loose, GRAPH_SHAPED)
        loose.decode(model, req)
        loose_s, _ = median_timed(lambda: loose.decode(model, req))
        loose.reset()
        # The other kernels of the step: plain ATen ops against the fused Triton kernels (on the
        # CPU the Triton ones run in the interpreter: a count, not a speed).
        kernels_used = backend.kernels_for(model)
        other = "aten" if kernels_used == "triton" else "triton"
        alternative: dict[str, Any] = {"kernels_other": other}
        try:
            alt = DgxBackend(kernels=other)
            alt.decode(model, req)
            alt_s, _ = median_timed(lambda: alt.decode(model, req))
            alternative["ms_per_step_other"] = round(1000 * alt_s / steps, 3)
            if cuda:  # interpreted kernels' bookkeeping would swamp a CPU count: bench --ops counts there
                counted = _kernels_per_step(lambda: alt.decode(model, req), steps, cuda)
                alternative["kernels_per_step_other"] = counted["kernels_per_step"]
            alt.reset()
        except Exception as exc:  # noqa: BLE001 - recorded: Triton missing or refused is a finding
            alternative["other_error"] = f"{type(exc).__name__}: {exc}"
    return {
        "ok": True,
        "shape": shape,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "duration_s": seconds,
        "steps": steps,
        "uses_graphs": backend.uses_graphs(model),
        "first_decode_s": round(first_s, 4),
        "warm_decode_s": round(warm_s, 4),
        # The first decode of a shape pays the graph capture (and lazy initialisation): the difference.
        "capture_s": round(max(0.0, first_s - warm_s), 4),
        "ms_per_step": round(1000 * warm_s / steps, 3),
        "repeats": REPEATS,
        # The whole decode's time per step (T5 and the prefill included): a lower bound on the share.
        **_share(
            step_bytes(shape, dtype.itemsize, rows=2, positions=steps // 2),
            1000 * warm_s / steps,
            plan,
        ),
        "kernels": kernels_used,
        **alternative,
        "batch_invariant": backend.invariant(model),
        "ms_per_step_invariant": round(1000 * invariant_s / steps, 3),
        "ms_per_step_invariant_off": round(1000 * loose_s / steps, 3),
        "t5_s": round(t5_s, 4),
        "delay_pattern_s": round(pattern_s, 4),
        "encodec_s": round(codec_s, 4),
        "peak_memory_bytes": peak,
        **kernels,
    }


def _kernels_per_step(fn: Callable[[], Any], steps: int, cuda: bool) -> dict[str, Any]:
    """Device kernels per decode step from torch.profiler (CPU: the ATen ops run, as a proxy)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
    events = prof.events()
    if cuda:
        count = sum(
            1 for e in events if getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type)
        )
        kind = "cuda kernels"
    else:
        count = sum(1 for e in events if e.name.startswith("aten::"))
        kind = "aten ops (nested calls included)"
    return {"kernels_per_step": round(count / max(1, steps), 1), "kernels_counted": kind}


def _rss_peak() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def section_daemon(plan: Plan) -> dict[str, Any]:
    shape = "tiny" if plan.quick else "small"
    directory = plan.work / f"daemon-{shape}"
    built = Path(_build(shape, str(directory)))
    spool = plan.work / "spool"
    cfg = _config(plan, spool, {shape: built}, shape)
    env = dict(os.environ, DGX_MUSIC_CONFIG=str(cfg))
    log_path = plan.work / "serve.log"
    with open(log_path, "w", encoding="utf-8") as log_file:
        serve = subprocess.Popen(
            [PY, "-m", "daemon", "serve", "--config", str(cfg)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    try:
        _wait_for_start(serve, spool, log_path, plan.timeout)
        job = plan.work / "check.yaml"
        job.write_text(
            f"prompt: gpu check, warm lo-fi piano\nduration: {1 if plan.quick else 8}\nseed: 7\n"
            f"model: {shape}\n",
            encoding="utf-8",
        )
        t0 = time.perf_counter()
        proc = _cli(
            "submit",
            str(job),
            "--wait",
            "--timeout",
            str(plan.timeout),
            "--config",
            str(cfg),
            timeout=plan.timeout + 30,
            env=env,
        )
        wall = time.perf_counter() - t0
        sidecars = sorted((spool / "outbox").glob("*.json"))
        if proc.returncode != 0 or not sidecars:
            raise RuntimeError(
                f"submit --wait exited {proc.returncode}: {_tail(proc.stderr + proc.stdout, 800)}; "
                f"serve log: {_tail(log_path.read_text(errors='replace'), 1200)}"
            )
        side = json.loads(sidecars[0].read_text())
        ok = side.get("status") == "completed"
        return {
            "ok": ok,
            "submit_wall_s": round(wall, 3),
            "status": side.get("status"),
            "model": side.get("model"),
            "timings": side.get("timings"),
            "rtf": side.get("rtf"),
            "peak_memory_bytes": side.get("peak_memory_bytes"),
        }
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()


def _wait_for_start(serve: subprocess.Popen[bytes], spool: Path, log_path: Path, timeout: float) -> None:
    """Until the daemon has made its spool (it loads the model next; submit waits for the result)."""
    deadline = time.monotonic() + timeout
    while not (spool / "inbox").is_dir():
        if serve.poll() is not None:
            raise RuntimeError(
                f"serve exited {serve.returncode}: {_tail(log_path.read_text(errors='replace'), 1200)}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError("serve did not create its spool in time")
        time.sleep(0.2)


# In order of value: a run cut short (one GPU call of a few minutes) keeps the headline figures.
SECTIONS: dict[str, Callable[[Plan], dict[str, Any]]] = {
    "doctor": section_doctor,
    "bandwidth": section_bandwidth,
    "compare": section_compare,
    "profile": section_profile,
    "shapes": section_shapes,
    "daemon": section_daemon,
    "acestep": section_acestep,
    "gpu_tests": section_gpu_tests,
}


# ---------------------------------------------------------------- report


def _summary(results: dict[str, Any]) -> str:
    lines = [
        f"# dgx-music device check ({results['device']}{', quick' if results['quick'] else ''})",
        "",
        f"{results['host']['platform']}, python {results['host']['python']}, "
        f"torch {results['host'].get('torch')}, transformers {results['host'].get('transformers')}",
        "",
        "| section | ok | seconds | key figures |",
        "|---|---|---|---|",
    ]
    for name, sec in results["sections"].items():
        lines.append(
            f"| {name} | {'yes' if sec.get('ok') else 'NO'} | {sec.get('seconds', 0):.1f} "
            f"| {_figures(name, sec)} |"
        )
    errors = [(n, s["error"]) for n, s in results["sections"].items() if s.get("error")]
    if errors:
        lines += ["", "## Errors", ""] + [f"- **{n}**: {e.splitlines()[0][:400]}" for n, e in errors]
    lines += ["", f"Overall: {'PASS' if results['ok'] else 'FAIL'} in {results['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def _figures(name: str, sec: dict[str, Any]) -> str:
    if sec.get("error"):
        return "error"
    if name == "doctor":
        return f"failed checks: {', '.join(sec.get('failed_checks') or []) or 'none'}"
    if name == "bandwidth":
        return f"{sec['gb_per_s']} GB/s (copy, median of {len(sec['copy_s_runs'])})"
    if name == "gpu_tests":
        return f"{sec.get('passed', 0)} of {sec.get('collected', 0)} passed ({sec.get('summary', '')})"
    if name == "compare":
        parts = []
        for key, run in sec.items():
            if key.startswith("batch") and isinstance(run, dict) and "dgx_gen_s" in run:
                parts.append(
                    f"{key}: dgx {run['dgx_gen_s']:.3f} s vs generate {run['transformers_gen_s']:.3f} s "
                    f"(x{run['speedup']}, median of {run['repeats']}), {run['dgx_audio_s_per_s']} audio s/s, "
                    f"{run['dgx_ms_per_step']} ms/step = {run.get('bandwidth_share', 'n/a')} of the bandwidth"
                )
        return "; ".join(parts)
    if name == "shapes":
        return "; ".join(
            f"{k}: dgx {v['dgx_gen_s']:.3f} s, peak {v['dgx_peak_memory_bytes'] / 2**30:.1f} GiB, "
            f"triton / aten {v.get('triton_over_aten', 'n/a')}"
            for k, v in sec.items()
            if isinstance(v, dict) and "dgx_gen_s" in v
        )
    if name == "profile":
        return (
            f"{sec['ms_per_step']} ms/step ({sec.get('bandwidth_share', 'n/a')} of the bandwidth), "
            f"capture {sec['capture_s']} s, "
            f"{sec['kernels_per_step']} kernels/step on {sec.get('kernels')} "
            f"({sec.get('kernels_other')}: {sec.get('ms_per_step_other', 'n/a')} ms/step, "
            f"{sec.get('kernels_per_step_other', 'n/a')} kernels/step), "
            f"T5 {sec['t5_s']} s, delay pattern {sec['delay_pattern_s']} s, EnCodec {sec['encodec_s']} s, "
            f"fixed shapes {sec['ms_per_step_invariant']} ms/step "
            f"({sec['ms_per_step_invariant_off']} without)"
        )
    if name == "acestep":
        return "; ".join(
            f"{k}: dgx {v['dgx_gen_s']:.3f} s vs diffusers {v['diffusers_gen_s']:.3f} s (ratio {v['ratio']}, "
            f"{'identical' if v['identical'] else 'DIFFERENT'}), {v['dgx_audio_s_per_s']} audio s/s, "
            + _compiled_text(v)
            for k, v in sec.items()
            if isinstance(v, dict) and "dgx_gen_s" in v
        )
    if name == "daemon":
        model = sec.get("model") or {}
        decoder = model.get("decoder")
        return f"{sec.get('status')} in {sec.get('submit_wall_s')} s, decoder {decoder}, rtf {sec.get('rtf')}"
    return ""


def _compiled_text(v: dict[str, Any]) -> str:
    if "compiled_gen_s" not in v:
        return f"compiled DiT skipped ({v.get('compiled_skipped')})"
    close = "within tolerance" if v["compiled_within_tolerance"] else "OUTSIDE tolerance"
    return (
        f"compiled DiT {v['compiled_gen_s']:.3f} s (x{v['compiled_vs_eager']} of eager, {close}: "
        f"max |diff| {v['compiled_max_abs_diff']:.1e}, SNR {v['compiled_snr_db']} dB; "
        f"compile {v['compiled_first_call_s']} s)"
    )


def _host() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        import torch
        import transformers

        info.update(
            torch=torch.__version__,
            transformers=transformers.__version__,
            cuda=torch.version.cuda,
            gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        )
    except Exception as exc:  # the report still says what is missing
        info["import_error"] = f"{type(exc).__name__}: {exc}"
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json and summary.md")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument(
        "--quick", action="store_true", help="tiny model and short clips (a smoke run, any machine)"
    )
    parser.add_argument("--only", default=None, help=f"comma-separated sections ({', '.join(SECTIONS)})")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.device == "cpu":
        # The Triton kernels can only be interpreted here; Triton must hear so before it is imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)}")
    started = time.perf_counter()
    results: dict[str, Any] = {"device": args.device, "quick": args.quick, "host": _host(), "sections": {}}
    with tempfile.TemporaryDirectory(prefix="dgx-music-gpu-check-") as tmp:
        plan = Plan(args.device, args.quick, Path(tmp))
        for name in chosen:
            print(f"[gpu_check] {name}...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                sec = SECTIONS[name](plan)
            except Exception as exc:  # one section's failure is recorded; the others still run
                sec = {
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
            sec["seconds"] = round(time.perf_counter() - t0, 2)
            results["sections"][name] = sec
            print(
                f"[gpu_check] {name}: {'ok' if sec.get('ok') else 'FAILED'} in {sec['seconds']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["ok"] = all(s.get("ok") for s in results["sections"].values())
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "summary.md").write_text(_summary(results))
    print((args.out / "summary.md").read_text())
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
