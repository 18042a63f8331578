"""`submit --wait` against a real daemon, as a user sees it: a batch of 8 jobs decoded together,
followed as plain lines (stderr not a terminal: logs, CI) and as a bar on a terminal (a pty).

Progress only moves forward, names the stage the jobs are in (queued, generating, writing) and
ends with the results, never with the state of a moment before.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
import yaml
from daemon_harness import DaemonProcess, clean_env, dgx_music_command, write_config

pytestmark = pytest.mark.slow  # one daemon, two batches of 8 short jobs: under a minute on a small box

JOBS = 8
STAGES = ("waiting", "queued", "generating", "writing")


def batch_file(path: Path, seed: int) -> Path:
    jobs = [{"prompt": f"a little tune number {i} for the bar", "seed": seed + i} for i in range(JOBS)]
    path.write_text(yaml.safe_dump({"defaults": {"duration": 1.0}, "jobs": jobs}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("submit-progress")
    # Each decode pauses 1 s at its third step: long enough to be seen generating at any poll.
    config = write_config(
        root / "config.yaml",
        root / "spool",
        tiny_model_dir,
        max_batch=JOBS,
        fault_injection={"stall_after_steps": 3, "stall_s": 1.0},
    )
    with DaemonProcess(config, root / "daemon.log") as daemon:
        daemon.start()
        yield root, config, daemon
        assert daemon.stop() == 0, daemon.log_tail()


def submit_command(config: Path, job: Path) -> list[str]:
    return [*dgx_music_command(), "submit", str(job), "--wait", "--timeout", "240", "--config", str(config)]


def percents(lines: list[str]) -> list[float]:
    return [float(m.group(1)) for ln in lines if (m := re.match(r"waiting:\s+([\d.]+)%", ln))]


def test_plain_lines_only_move_forward_name_each_stage_and_end_with_the_results(served) -> None:  # type: ignore[no-untyped-def]
    root, config, daemon = served
    res = subprocess.run(
        submit_command(config, batch_file(root / "plain.yaml", 100)),
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
    )
    assert res.returncode == 0, res.stderr + daemon.log_tail()
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("waiting:")]
    assert lines, res.stderr
    shown = percents(lines)
    assert shown == sorted(shown), f"progress went back: {lines}"
    # The stages in the order jobs go through them: once a stage is first named after a later
    # one, something went backwards (8 jobs in one batch move together).
    firsts = [next((i for i, ln in enumerate(lines) if f" {s} " in ln + " "), None) for s in STAGES]
    seen = [i for i in firsts if i is not None]
    assert seen == sorted(seen), lines
    assert firsts[STAGES.index("generating")] is not None, lines
    # The end: every job done, and nothing of a moment before (no queue, no ETA, no percentage).
    assert lines[-1] == f"waiting: 100.0% {JOBS}/{JOBS} done", lines[-3:]
    assert not any("100.0%" in ln for ln in lines[:-1]), lines
    completed = [ln for ln in res.stdout.splitlines() if ln.startswith("completed: ")]
    assert len(completed) == JOBS and all(Path(ln.split(": ", 1)[1]).is_file() for ln in completed)


def test_the_bar_on_a_terminal_has_no_stray_comma_and_ends_with_the_results(served) -> None:  # type: ignore[no-untyped-def]
    root, config, daemon = served
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 110, 0, 0))  # a terminal's size
    proc = subprocess.Popen(
        submit_command(config, batch_file(root / "tty.yaml", 200)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=child,
        env={**clean_env(), "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(child)
    seen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(main)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.wait(30) == 0, seen.decode(errors="replace")[-2000:] + daemon.log_tail()
    text = seen.decode("utf-8", errors="replace")
    frames = [f for f in re.split(r"[\r\n]", text) if f.startswith("waiting:")]
    assert frames and "\r" in text, text[-2000:]
    assert not [f for f in frames if re.search(r"\|\s*,", f)], "a comma right after the bar"
    assert all(re.search(r"\| \d+/\d+ done", f) for f in frames), frames[:5]
    shown = percents(frames)
    assert shown == sorted(shown), f"the bar went back: {frames}"
    assert any(" generating " in f for f in frames), frames
    completed = [ln for ln in out.splitlines() if ln.startswith("completed: ")]
    assert len(completed) == JOBS
