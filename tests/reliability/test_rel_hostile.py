"""Hostile input through the running daemon.

The whole bad-input corpus of the job language (tests/jobspec/test_jobspec_bad.py), plus an alias
bomb, 10,000 nesting levels, a 100 MB file, a FIFO, a symlink to a job outside the spool, ids
and model names that try path traversal, files that vanish between event and claim, an
unreadable file and names the contract ignores. Each must end in failed/ with a precise error
and its original bytes (or be left alone, for ignored names); the daemon stays up and writes
nothing outside its spool (a snapshot of everything around it is compared).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from reliability.daemonproc import (
    DaemonProc,
    drop,
    job_yaml,
    outcomes,
    record_figures,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# The job language's own corpus: every case it refuses, the daemon must refuse too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobspec"))
from test_jobspec_bad import BILLION_LAUGHS, CASES  # noqa: E402

BIG_BYTES = 100 * 1024 * 1024


def _snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int, int]]:
    """name -> (mode, size, mtime_ns) for every entry below root, outside `skip`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in skip]
        for name in dirnames + filenames:
            p = d / name
            if p in skip:
                continue
            st = os.lstat(p)
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _error(spool: Path, job_id: str) -> dict:
    return json.loads((spool / "failed" / f"{job_id}.error.json").read_bytes())


def test_hostile_inputs_end_in_failed_with_precise_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert CASES, "tests/jobspec/test_jobspec_bad.py's corpus is not importable"
    spool = tmp_path / "spool"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.yaml"
    secret.write_text(job_yaml("SECRET job outside the spool", duration=0.1))
    cfg = write_config(tmp_path / "config.yaml", spool, tiny_model_dir, rescan_interval_s=1.0)
    log_path = tmp_path / "daemon.log"
    daemon = DaemonProc(cfg, log_path)
    daemon.start().wait_ready()
    inbox = spool / "inbox"
    skip = {spool, log_path}
    before = _snapshot(tmp_path, skip)

    # expected[job id] = (error type, check(error sidecar), original bytes or None)
    expected: dict[str, tuple[str, object, bytes | None]] = {}
    corpus = [c for c in CASES if c.max_bytes == 65536 and c.max_duration == 300.0]
    not_applicable = [c.name for c in CASES if c not in corpus]
    for case in corpus:
        name = case.filename if case.filename != "job.yaml" else f"bad-{case.name}.yaml"
        job_id = name[: -len(".yaml")]
        assert job_id not in expected, f"two corpus cases share {name}"
        drop(inbox, name, case.data)

        def check(err: dict, case=case) -> None:
            hits = [d for d in err["error"]["details"] if d["loc"] == case.loc]
            assert hits, (case.name, err)
            assert any(d["line"] == case.line and case.fragment in d["msg"] for d in hits), (case.name, err)

        expected[job_id] = ("invalid_job", check, case.data)

    def msg_has(*words: str):
        def check(err: dict) -> None:
            text = json.dumps(err["error"]).lower()
            assert all(w.lower() in text for w in words), (words, err)

        return check

    extras: dict[str, tuple[str, bytes, str, object]] = {
        "alias-bomb": ("alias-bomb.yaml", BILLION_LAUGHS, "invalid_job", msg_has("alias")),
        "deep-nesting": (
            "deep-nesting.yaml",
            b"prompt: " + b"[" * 10_000 + b"]" * 10_000 + b"\n",
            "invalid_job",
            msg_has(),
        ),
        "deep-mapping": (
            "deep-mapping.yaml",
            b"prompt: " + b"{a: " * 10_000 + b"1" + b"}" * 10_000 + b"\n",
            "invalid_job",
            msg_has(),
        ),
        "id-traversal": (
            "id-traversal.yaml",
            job_yaml("escape by id", id="../../../tmp/escape").encode(),
            "invalid_job",
            msg_has("id"),
        ),
        "id-absolute": (
            "id-absolute.yaml",
            job_yaml("escape by id", id="/etc/passwd").encode(),
            "invalid_job",
            msg_has("id"),
        ),
        "model-traversal": (
            "model-traversal.yaml",
            job_yaml("escape by model", model="../../../../etc/passwd").encode(),
            "invalid_job",
            msg_has("model"),
        ),
        "model-absolute": (
            "model-absolute.yaml",
            job_yaml("escape by model", model="/tmp").encode(),
            "invalid_job",
            msg_has("model"),
        ),
        "model-unknown": (
            "model-unknown.yaml",
            job_yaml("no such model", model="large").encode(),
            "unknown_model",
            msg_has("large", "tiny"),
        ),
        "not-utf8": ("not-utf8.yaml", b"prompt: \xff\xfe caf\xe9\n", "invalid_job", msg_has()),
        "nul-bytes": ("nul-bytes.yaml", b"prompt: warm\x00piano\n", "invalid_job", msg_has()),
        "empty": ("empty.yaml", b"", "invalid_job", msg_has()),
    }
    for job_id, (name, data, etype, check) in extras.items():
        drop(inbox, name, data)
        expected[job_id] = (etype, check, data)

    # 100 MB: refused by size without being read whole; moved, not copied, so the bytes stay.
    big = inbox / ".big.yaml.part"
    h = hashlib.sha256()
    with open(big, "wb") as fh:
        chunk = b"prompt: " + b"x" * (1024 * 1024 - 9) + b"\n"
        for _ in range(BIG_BYTES // len(chunk)):
            fh.write(chunk)
            h.update(chunk)
    big_sha, big_size = h.hexdigest(), big.stat().st_size
    os.rename(big, inbox / "big.yaml")
    expected["big"] = ("invalid_job", msg_has("bytes"), None)

    # Entries that are not regular files: moved to failed/ themselves, never opened or followed.
    os.mkfifo(inbox / "fifo.yaml")
    expected["fifo"] = ("invalid_job", msg_has("fifo"), None)
    secret_before = (secret.read_bytes(), secret.stat().st_mtime_ns)
    os.symlink(secret, inbox / "link.yaml")
    expected["link"] = ("invalid_job", msg_has("symbolic link"), None)
    os.symlink("/etc/shadow", inbox / "shadow.yaml")
    expected["shadow"] = ("invalid_job", msg_has("symbolic link"), None)

    # Unreadable: root reads it anyway (DAC does not bind root), so then it is simply a job.
    unreadable = inbox / ".unreadable.part"
    unreadable.write_text(job_yaml("unreadable job", duration=0.1))
    unreadable.chmod(0)
    os.rename(unreadable, inbox / "unreadable.yaml")
    as_root = os.geteuid() == 0

    # Names the contract never reads: left alone.
    ignored = [
        ".hidden.yaml",
        "draft.yaml~",
        "x.yaml.swp",
        "upload.yaml.part",
        "y.tmp",
        "notes.txt",
        ".#lock.yaml",
    ]
    for name in ignored:
        (inbox / name).write_text(job_yaml("must be ignored"))
    (inbox / "subdir.yaml").mkdir()

    # Files that vanish between the event and the claim (or are claimed first: then they run).
    vanished, raced = 0, []
    for i in range(40):
        p = drop(inbox, f"vanish{i}.yaml", job_yaml(f"vanishing {i}", duration=0.1))
        try:
            p.unlink()
            vanished += 1
        except FileNotFoundError:
            raced.append(f"vanish{i}")

    try:
        wanted = set(expected)
        wait_until(
            lambda: wanted <= set(outcomes(spool).failed),
            240,
            interval=0.25,
            what="every hostile input's outcome",
        )
        wait_until(
            lambda: (spool / "outbox" / "unreadable.json").exists() or not as_root,
            60,
            what="the unreadable job",
        )
        for job_id in raced:
            wait_until(lambda: (spool / "outbox" / f"{job_id}.json").exists(), 60, what=f"raced {job_id}")
        # Still up and still working.
        drop(inbox, "after.yaml", job_yaml("after the storm", duration=0.1))
        wait_until(
            lambda: (spool / "outbox" / "after.json").exists(), 60, what="a good job after the hostile ones"
        )
        assert daemon.alive()
    finally:
        rc = daemon.stop()
    assert rc == 0

    got = outcomes(spool)
    held = 0
    for job_id, (etype, check, data) in expected.items():
        err = got.failed[job_id]
        assert err["error"]["type"] == etype, (job_id, err)
        assert err["error"]["message"], job_id
        check(err)  # type: ignore[operator]
        if data is not None:
            assert (spool / "failed" / f"{job_id}.yaml").read_bytes() == data, job_id
        held += 1
    big_failed = spool / "failed" / "big.yaml"
    assert big_failed.stat().st_size == big_size
    assert hashlib.sha256(big_failed.read_bytes()).hexdigest() == big_sha
    assert stat.S_ISFIFO(os.lstat(spool / "failed" / "fifo.yaml").st_mode)
    assert os.readlink(spool / "failed" / "link.yaml") == str(secret)
    assert (secret.read_bytes(), secret.stat().st_mtime_ns) == secret_before
    assert not any("SECRET" in json.dumps(b["request"]) for b in got.completed.values())
    assert not any(job_id.startswith("vanish") for job_id in got.failed)
    assert sorted(j for j in got.completed if j.startswith("vanish")) == sorted(raced)
    if as_root:
        assert "unreadable" in got.completed
    # Ignored names are untouched in the inbox.
    for name in ignored:
        assert (inbox / name).read_text() == job_yaml("must be ignored"), name
    assert (inbox / "subdir.yaml").is_dir()
    # Nothing written (or removed) outside the spool.
    assert _snapshot(tmp_path, skip) == before
    # Every reservation was given back.
    assert not os.listdir(spool / "state" / "reserved")
    log = daemon.log_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 1500 :][:4000]
    record_figures(
        "hostile",
        {
            "inputs_tried": len(expected) + len(ignored) + 1 + 40 + 1,
            "corpus_cases": len(corpus),
            "corpus_not_applicable": not_applicable,
            "failed_as_expected": held,
            "ignored_left_alone": len(ignored) + 1,
            "vanished_before_claim": vanished,
            "raced_and_ran": len(raced),
            "unreadable_as_root": "completed" if as_root else "n/a",
            "held": held + len(ignored) + 1 + 40 + (1 if as_root else 0),
        },
    )
