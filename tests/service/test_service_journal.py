"""What the operator reads: the real daemon's log lines, on plain stderr and in the journal.

Plain stderr (no JOURNAL_STREAM): every line of a job carries `[job <id>/<model>/<stage>]`,
and one INFO line per job gives duration, RTF, LUFS and the output path.

Journal: with JOURNAL_STREAM naming its stderr, the daemon must send native journal records
carrying DGX_MUSIC_JOB_ID, DGX_MUSIC_MODEL and DGX_MUSIC_STAGE (so `journalctl -u dgx-music
DGX_MUSIC_JOB_ID=x` tells one job's story; JOB_ID is systemd's own field), and a fixed MESSAGE_ID
on the completed and failed records.
Where no journald runs (CI containers), the test makes one: in a private mount namespace a
tmpfs covers /run and the test binds /run/systemd/journal/socket itself, so libsystemd's
sd_journal_send() delivers to us. Skipped, with the reason, where systemd-python is missing or
a mount namespace cannot be made.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from reliability.daemonproc import DaemonProc, clean_env, drop, job_yaml, wait_until, write_config

from daemon.core.logctx import MESSAGE_ID_JOB_COMPLETED, MESSAGE_ID_JOB_FAILED

pytestmark = pytest.mark.slow

COMPLETED_RE = re.compile(
    r"INFO \[job (?P<id>[\w.-]+)/tiny/write\] job (?P=id) completed: (?P<dur>[\d.]+) s audio x(?P<n>\d+) "
    r"in (?P<gen>[\d.]+) s \(RTF (?P<rtf>[\d.]+)\), (?P<lufs>-?[\d.]+) LUFS, -> (?P<path>\S+)$",
    re.M,
)


def test_plain_stderr_lines_carry_the_job_context_and_one_summary_line(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    spool = tmp_path / "spool"
    cfg = write_config(tmp_path / "config.yaml", spool, tiny_model_dir)
    daemon = DaemonProc(cfg, tmp_path / "daemon.log")
    try:
        daemon.start().wait_ready()
        drop(
            spool / "inbox",
            "jr1.yaml",
            job_yaml("journal story tune", duration=0.5, seed=5, output={"loudness_lufs": -20.0}),
        )
        drop(spool / "inbox", "broken.yaml", "prompt: [unclosed\n")
        wait_until(lambda: (spool / "outbox" / "jr1.json").exists(), 60, what="jr1 result")
        wait_until(lambda: (spool / "failed" / "broken.error.json").exists(), 60, what="broken rejected")
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
    log = daemon.log_text()
    job_lines = [line for line in log.splitlines() if "jr1" in line]
    # Every line about the job says which job, model and stage it belongs to.
    assert job_lines and all("[job jr1/tiny/" in line for line in job_lines), job_lines
    stages = {m.group(1) for line in job_lines if (m := re.search(r"\[job jr1/tiny/(\w+)\]", line))}
    assert {"queued", "generate", "write"} <= stages, stages
    # An invalid job file is one record: its failure, naming file, line and what is wrong.
    broken = [line for line in log.splitlines() if "broken" in line]
    assert len(broken) == 1, broken
    assert re.search(
        r"WARNING \[job broken/validate\] job broken failed: invalid_job: broken.yaml:2: ", broken[0]
    )

    summaries = [m for m in COMPLETED_RE.finditer(log) if m.group("id") == "jr1"]
    assert len(summaries) == 1, log
    m = summaries[0]
    sidecar = json.loads((spool / "outbox" / "jr1.json").read_bytes())
    out = sidecar["outputs"][0]
    assert float(m.group("dur")) == pytest.approx(out["duration_s"], abs=0.05)
    assert float(m.group("rtf")) == pytest.approx(sidecar["rtf"], abs=1e-3)
    assert float(m.group("lufs")) == pytest.approx(out["integrated_lufs"], abs=1e-3)
    assert float(m.group("lufs")) == pytest.approx(-20.0, abs=0.5)
    assert Path(m.group("path")) == spool / "outbox" / "jr1.json"


# --------------------------------------------------------------------------- journal fields

_FAKE_JOURNALD = r"""
import json, os, socket, struct, subprocess, sys

records, pidfile, stderr_path, config = sys.argv[1:5]


def parse(data):
    # journald's native protocol: KEY=value lines, or KEY\n<u64 LE length><bytes>\n for binary values.
    # A field given more than once keeps every value (a list), as journald does.
    fields, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = nl + 1
        else:
            key = line
            n = struct.unpack("<Q", data[nl + 1:nl + 9])[0]
            value = data[nl + 9:nl + 9 + n]
            i = nl + 9 + n + 1
        name, text = key.decode(), value.decode("utf-8", "replace")
        if name in fields:
            fields[name] = [*(fields[name] if isinstance(fields[name], list) else [fields[name]]), text]
        else:
            fields[name] = text
    return fields


os.makedirs("/run/systemd/journal", exist_ok=True)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("/run/systemd/journal/socket")
sock.settimeout(0.2)
err = open(stderr_path, "ab")
st = os.fstat(err.fileno())
env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
daemon = subprocess.Popen([sys.executable, "-m", "daemon", "serve", "--config", config],
                          stdout=err, stderr=err, env=env, cwd=os.path.dirname(config))
with open(pidfile, "w") as fh:
    fh.write(str(daemon.pid))
with open(records, "a") as out:
    while True:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            if daemon.poll() is not None:
                break
            continue
        out.write(json.dumps(parse(data)) + "\n")
        out.flush()
sys.exit(daemon.returncode)
"""


def _journal_records(path: Path) -> list[dict[str, str]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else [value]


def _can_make_mount_namespace() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /run"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"cannot make a mount namespace with a tmpfs on /run: {probe.stderr.strip()}"
    return None


def test_journal_records_carry_job_id_model_and_stage(tmp_path: Path, tiny_model_dir: Path) -> None:
    try:
        from systemd import journal  # noqa: F401
    except ImportError:
        pytest.skip("systemd-python is not installed: the daemon logs plain lines only")
    why = _can_make_mount_namespace()
    if why:
        pytest.skip(why)
    tmp = Path(tempfile.mkdtemp(prefix="dgxj-", dir="/tmp"))
    try:
        spool = tmp / "spool"
        cfg = write_config(tmp / "config.yaml", spool, tiny_model_dir)
        # Each decode pauses at its second step: a batch file dropped meanwhile is decoded as one batch.
        faults = json.dumps({"stall_after_steps": 2, "stall_s": 5.0})
        helper = tmp / "fake_journald.py"
        helper.write_text(_FAKE_JOURNALD)
        records, pidfile, stderr_path = tmp / "records.jsonl", tmp / "daemon.pid", tmp / "stderr.txt"
        cmd = [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount -t tmpfs -o size=1m tmpfs /run && exec "$0" "$@"',
            sys.executable,
            str(helper),
            str(records),
            str(pidfile),
            str(stderr_path),
            str(cfg),
        ]
        proc = subprocess.Popen(cmd, env=clean_env({"DGXMUSIC_TEST_FAULTS": faults}), cwd=tmp)
        try:
            wait_until(
                lambda: (
                    any("ready: watching" in r.get("MESSAGE", "") for r in _journal_records(records))
                    or proc.poll() is not None
                ),
                180,
                what="READY in the journal",
            )
            assert proc.poll() is None, stderr_path.read_text()[-3000:]
            drop(spool / "inbox", "jr2.yaml", job_yaml("journal fields tune", duration=0.2, seed=2))
            wait_until(
                lambda: any("stalling" in r.get("MESSAGE", "") for r in _journal_records(records)),
                60,
                what="jr2 decoding",
            )
            trio = [{"prompt": f"batched journal tune {i}", "seed": i} for i in range(3)]
            drop(spool / "inbox", "trio.yaml", json.dumps({"defaults": {"duration": 0.2}, "jobs": trio}))
            for name in ("jr2", "trio.1", "trio.2", "trio.3"):
                wait_until(
                    lambda n=name: (spool / "outbox" / f"{n}.json").exists(), 60, what=f"{name} result"
                )
            drop(spool / "inbox", "jr3.yaml", job_yaml("no such model here", duration=0.2, model="nosuch"))
            wait_until(lambda: (spool / "failed" / "jr3.error.json").exists(), 60, what="jr3 failure")
            time.sleep(0.3)
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
            assert proc.wait(60) == 0, stderr_path.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        recs = _journal_records(records)
        # The journal handler was chosen: log lines went to the journal, not to the stream.
        assert "ready: watching" not in stderr_path.read_text()
        assert all(r.get("SYSLOG_IDENTIFIER") == "dgx-music" for r in recs)

        assert not any("JOB_ID" in r for r in recs)  # systemd's field: never ours
        story = [r for r in recs if r.get("DGX_MUSIC_JOB_ID") == "jr2"]
        stages = [r["DGX_MUSIC_STAGE"] for r in story]
        assert {"queued", "generate", "write"} <= set(stages), stages
        assert all(r.get("DGX_MUSIC_MODEL") == "tiny" for r in story), story
        done = [r for r in story if "completed" in r["MESSAGE"]]
        assert len(done) == 1, story
        rec = done[0]
        assert rec["DGX_MUSIC_STAGE"] == "write" and rec["PRIORITY"] == "6"
        assert rec["MESSAGE_ID"] == MESSAGE_ID_JOB_COMPLETED
        completed = [r for r in recs if r.get("MESSAGE_ID") == MESSAGE_ID_JOB_COMPLETED]
        assert [r["DGX_MUSIC_JOB_ID"] for r in completed if r["DGX_MUSIC_JOB_ID"] == "jr2"] == ["jr2"]
        failed = [r for r in recs if r.get("MESSAGE_ID") == MESSAGE_ID_JOB_FAILED]
        assert [r["DGX_MUSIC_JOB_ID"] for r in failed] == ["jr3"], failed
        assert "unknown_model" in failed[0]["MESSAGE"] and failed[0]["PRIORITY"] == "4"
        assert rec["CODE_FILE"].endswith("publish.py") and rec["CODE_LINE"].isdigit()
        assert (
            "RTF" in rec["MESSAGE"]
            and "LUFS" in rec["MESSAGE"]
            and str(spool / "outbox" / "jr2.json") in rec["MESSAGE"]
        )
        # A decode batch: its own records name every job of it; every record about one job of
        # it (its "generated" line, its files) carries that job's id alone.
        trio_ids = ["trio.1", "trio.2", "trio.3"]
        batch = [r for r in recs if "decoding 3 jobs as one batch" in r["MESSAGE"]]
        decodes = [(r["MESSAGE"], r.get("DGX_MUSIC_JOB_ID")) for r in recs if "generat" in r["MESSAGE"]]
        assert len(batch) == 1 and batch[0]["DGX_MUSIC_JOB_ID"] == trio_ids, decodes
        generated = [r for r in recs if "] generated " in r["MESSAGE"]]
        trio_generated = [r["DGX_MUSIC_JOB_ID"] for r in generated if "trio" in str(r["DGX_MUSIC_JOB_ID"])]
        assert sorted(trio_generated) == trio_ids, generated
        for job_id in trio_ids:
            own = [r for r in recs if r.get("DGX_MUSIC_JOB_ID") == job_id]
            assert {"generate", "write", "queued"} <= {r["DGX_MUSIC_STAGE"] for r in own}, own
            assert len([r for r in own if r.get("MESSAGE_ID") == MESSAGE_ID_JOB_COMPLETED]) == 1
            # `journalctl DGX_MUSIC_JOB_ID=trio.2` matches the batch record too (any of its values).
            assert batch[0] in [r for r in recs if job_id in as_list(r.get("DGX_MUSIC_JOB_ID"))]
        # Records outside any job carry no job fields.
        ready = next(r for r in recs if "ready: watching" in r["MESSAGE"])
        assert (
            "DGX_MUSIC_JOB_ID" not in ready and "DGX_MUSIC_STAGE" not in ready and "MESSAGE_ID" not in ready
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
