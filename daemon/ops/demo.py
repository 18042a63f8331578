"""`dgx-music demo`: the whole product on a laptop in well under a minute.

A temporary spool, a tiny random MusicGen built offline (and a tiny musicgen-melody one, and a
tiny ACE-Step 1.5 pipeline for songs with lyrics), the real daemon as a subprocess, the files from
`examples/` submitted through the same path as `dgx-music submit` (durations capped so a CPU keeps
up; jobs with a `melody` go to the melody model, songs with lyrics to the ACE-Step one), then a
table of what came out and where, and the lyrics of the songs. The examples' reference audio (a riff to
continue, a tune to follow) is written into the spool's library/ first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

from daemon.core.config import load_settings
from daemon.core.families import ACE_STEP, FAMILY_KEYS
from daemon.ops.client import Submitted, drop, validate_file, wait_for
from daemon.ops.progressbar import ProgressBar
from jobspec.names import PAGE_NAME

MELODY_MODEL = "tiny-melody"
SONG_MODEL = "tiny-song"
DEMO_SONG_S = 3.0  # the edit examples' source, short for a CPU


class DemoError(Exception):
    pass


def cap_durations(doc: Any, cap: float, long_cap: float) -> Any:
    """The example with every duration cut to `cap` (`long_cap` for long-form pieces, so the
    demo still goes through windowed continuation)."""

    def fix(job: dict[str, Any]) -> None:
        if "loop" in job:
            return  # a loop's length is its bars at its tempo (duration left out: 1.5 of them)
        d = job.get("duration")
        if isinstance(d, (int, float)):
            job["duration"] = min(float(d), long_cap if d > 30 else cap)
        sections = job.get("sections")
        if isinstance(sections, list) and sections:
            # Keep the structure, shrink the piece: every section scaled to a long_cap total.
            total = sum(float(x.get("duration", 0)) for x in sections if isinstance(x, dict))
            scale = min(1.0, long_cap / total) if total > 0 else 1.0
            for x in sections:
                if isinstance(x, dict) and isinstance(x.get("duration"), (int, float)):
                    x["duration"] = round(float(x["duration"]) * scale, 3)
        for kind in ("repaint", "lego"):
            if isinstance(job.get(kind), dict):
                # The demo's song is DEMO_SONG_S long: the range moves inside it.
                job[kind] = {**job[kind], "start": 1.0, "end": 2.0}
        if job.get("melody") is not None:
            job.setdefault("model", MELODY_MODEL)
        if any(k in job for k in FAMILY_KEYS[ACE_STEP]):
            job.setdefault("model", SONG_MODEL)

    if isinstance(doc, dict):
        fix(doc)
        if isinstance(doc.get("defaults"), dict):
            fix(doc["defaults"])
            doc["defaults"].setdefault("duration", cap)
        for job in doc.get("jobs", []) if isinstance(doc.get("jobs"), list) else []:
            if isinstance(job, dict):
                fix(job)
        if "jobs" not in doc and "sections" not in doc and "loop" not in doc:
            doc.setdefault("duration", cap)
    return doc


def _loop_note(output: dict[str, Any]) -> str:
    loop = output.get("loop")
    if not isinstance(loop, dict):
        return ""
    seam = "seamless" if loop["seamless"] else "seam over its limit"
    return f" (loop: {loop['bars']} bars at {loop['bpm']} BPM, {seam})"


def write_library(library: Path) -> None:
    """The reference audio the examples name: a riff to continue, a tune to follow, a song to edit."""
    library.mkdir(parents=True, exist_ok=True)
    rate = 32000
    t = np.arange(int(rate * 3.0)) / rate
    notes = 220.0 * 2 ** (np.array([0, 3, 7, 10, 7, 3]) / 12)  # a minor-seventh arpeggio
    step = len(t) // len(notes)
    tune = np.concatenate([0.3 * np.sin(2 * np.pi * f * t[:step]) for f in notes]).astype(np.float32)
    pulse = (0.5 + 0.5 * np.sign(np.sin(2 * np.pi * 2 * t[: len(tune)]))).astype(np.float32)
    for name, audio in (("riff.wav", tune * pulse), ("hummed-tune.wav", tune)):
        target = library / name
        if not target.exists():
            sf.write(str(target), audio, rate)
    # The song the edit examples (repaint, stems, cover) start from, stereo (read as 48 kHz).
    song = library / "song.wav"
    if not song.exists():
        left = np.tile(tune * pulse, 2)[: int(DEMO_SONG_S * rate)]
        sf.write(str(song), np.stack([left, np.roll(left, 400)], axis=1), rate)


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(
                f"the daemon exited with {proc.returncode}; its log:\n{log_path.read_text(errors='replace')}"
            )
        if "ready: watching" in log_path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise DemoError(f"the daemon was not ready after {timeout_s:.0f} s; see {log_path}")


def run_demo(
    workdir: Path | None, examples: Path, *, cap: float = 2.0, long_cap: float = 4.0, device: str = "cpu"
) -> int:
    from daemon.ops.tinymodel import init_tiny

    files = (
        sorted(p for p in examples.iterdir() if p.suffix in (".yaml", ".yml")) if examples.is_dir() else []
    )
    if not files:
        raise DemoError(f"no job files in {examples} (pass --examples DIR)")
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="dgx-music-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"demo: working in {root}")
    model_dir = root / "models" / "tiny"
    if not (model_dir / "config.json").exists():
        print("demo: building a tiny random MusicGen checkpoint (offline tokenizer)...")
        init_tiny(model_dir)
    melody_dir = root / "models" / MELODY_MODEL
    if not (melody_dir / "config.json").exists():
        print("demo: building a tiny random musicgen-melody checkpoint...")
        init_tiny(melody_dir, melody=True)
    song_dir = root / "models" / SONG_MODEL
    if not (song_dir / "model_index.json").exists():
        from daemon.ops.tinyacestep import init_tiny as init_tiny_song

        print("demo: building a tiny random ACE-Step 1.5 pipeline (songs with lyrics)...")
        init_tiny_song(song_dir)
    cfg = root / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "spool": str(root / "spool"),
                "models": {
                    "tiny": {"path": str(model_dir)},
                    MELODY_MODEL: {"path": str(melody_dir)},
                    SONG_MODEL: {"path": str(song_dir)},
                },
                "default_model": "tiny",
                "device": device,
                # A small window, so the long piece goes through windowed continuation here too.
                "window_s": 2.0,
                "extend_stride_s": 1.2,
                "rescan_interval_s": 5.0,
            }
        )
    )
    settings = load_settings(cfg)
    write_library(settings.library)
    log_path = root / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGX_MUSIC_") and k != "NOTIFY_SOCKET"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "serve", "--config", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        print("demo: starting the daemon (loading the model)...")
        _wait_ready(proc, log_path, 180)
        jobs_dir = root / "jobs"
        jobs_dir.mkdir(exist_ok=True)
        subs: list[Submitted] = []
        for src in files:
            doc = cap_durations(yaml.safe_load(src.read_text(encoding="utf-8-sig")), cap, long_cap)
            capped = jobs_dir / src.name
            capped.write_text(
                f"# {src.name}, durations capped for the demo\n" + yaml.safe_dump(doc, sort_keys=False)
            )
            subs.append(drop(settings, capped, validate_file(settings, capped)))
        total = sum(len(s.jobs) for s in subs)
        print(f"demo: submitted {len(subs)} files ({total} jobs) to {settings.inbox}")
        bar = ProgressBar("demo")
        results = wait_for(
            settings,
            subs,
            timeout_s=600,
            on_tick=lambda p: bar.update(
                p.fraction, f"{p.done}/{p.total} done" + (f", {p.note}" if p.note else ""), eta_s=p.eta_s
            ),
        )
        bar.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    rows = []
    failed = 0
    for _key, (path, body) in sorted(results.items(), key=lambda kv: kv[1][1].get("job_id", "")):
        if body.get("status") == "completed":
            outs = body["outputs"]
            lufs = "/".join(
                f"{o['integrated_lufs']:.1f}" if o.get("integrated_lufs") is not None else "-" for o in outs
            )
            rows.append(
                (
                    body["job_id"],
                    "completed",
                    f"{outs[0]['duration_s']:.1f}s x{len(outs)}" + _loop_note(outs[0]),
                    lufs,
                    f"{body['rtf']:.3f}",
                    ", ".join(o["path"] for o in outs),
                )
            )
        else:
            failed += 1
            err = body.get("error", {})
            rows.append(
                (
                    body["job_id"],
                    body.get("status", "?"),
                    "-",
                    "-",
                    "-",
                    f"{err.get('type')}: {err.get('message')}",
                )
            )
    headers = ("job", "status", "audio", "LUFS", "RTF", "files")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    print()
    for r in [headers, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    print()
    for _path, body in results.values():
        request = body.get("request") or {}
        if body.get("status") == "completed" and request.get("lyrics"):
            model = body.get("model") or {}
            print(f"demo: {body['job_id']} sings ({model.get('family')}, licence {model.get('license')}):")
            print("    " + "\n    ".join(str(request["lyrics"]).strip().splitlines()))
            print()
    missing = total - len(results)
    print(f"demo: {len(results) - failed} completed, {failed} failed, {missing} missing")
    print(f"demo: audio and sidecars in {settings.outbox}")
    print(f"demo: failures in {settings.failed}; daemon log in {log_path}")
    page = settings.outbox / PAGE_NAME
    if page.is_file():  # written by the daemon as it stopped; absent only with page_max_jobs: 0
        print(f"demo: open {page.resolve().as_uri()} in a browser to see and play the results")
    return 0 if failed == 0 and missing == 0 else 1
