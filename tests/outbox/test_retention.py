"""Retention removes whole old results and nothing a job in flight holds or reads."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from daemon.core.config import Settings
from daemon.outbox.retention import find_expired, remove_expired
from daemon.service.outcomes import OutcomeObserver

DAY = 86400.0


def result(directory: Path, job_id: str, names: list[str], age_days: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    t = time.time() - age_days * DAY
    for n in names:
        (directory / n).write_bytes(b"RIFF")
        os.utime(directory / n, (t, t))
    (directory / f"{job_id}.json").write_text(
        json.dumps({"job_id": job_id, "outputs": [{"path": n} for n in names]})
    )
    os.utime(directory / f"{job_id}.json", (t, t))


def aged(path: Path, age_days: float, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    t = time.time() - age_days * DAY
    os.utime(path, (t, t))


def names(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def test_whole_old_results_go_and_the_rest_stays(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outbox, failed = tmp_path / "outbox", tmp_path / "failed"
    result(outbox, "old", ["old-v1.wav", "old-v2.wav"], 40)
    result(outbox, "new", ["new.wav"], 1)
    result(outbox, "held", ["held.wav"], 40)  # its id is reserved by a job in flight
    result(outbox, "ref", ["ref.wav"], 40)  # a queued job continues from it
    result(outbox / "band", "oldb", ["oldb.flac"], 40)
    aged(outbox / "orphan.wav", 40)  # no sidecar: an interrupted job's, not ours to judge
    aged(outbox / "index.html", 40)
    aged(outbox / ".tmp.json", 40, "{")
    aged(failed / "f.error.json", 40, "{}")
    aged(failed / "f.yaml", 40)
    aged(failed / "g.error.json", 2, "{}")
    aged(failed / "g.yaml", 2)
    expired = find_expired(
        outbox, failed, max_age_days=30, now=time.time(), reserved=["held"], protected=["ref.wav"]
    )
    assert sorted((x.where, x.job_id) for x in expired) == [
        ("failed", "f"),
        ("outbox", "old"),
        ("outbox/band", "oldb"),
    ]
    with caplog.at_level(logging.INFO, logger="daemon.outbox.retention"):
        assert remove_expired(expired) == 3
        assert remove_expired(expired) == 0  # gone already (a peer daemon): nothing to do
    assert names(outbox) == [
        ".tmp.json",
        "held.json",
        "held.wav",
        "index.html",
        "new.json",
        "new.wav",
        "orphan.wav",
        "ref.json",
        "ref.wav",
    ]
    assert names(failed) == ["g.error.json", "g.yaml"]
    assert "retention: removed outbox/{old.json, old-v1.wav, old-v2.wav}" in caplog.text


def test_service_runs_retention_only_when_configured(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    result(spool / "outbox", "old", ["old.wav"], 10)
    (spool / "failed").mkdir()
    (spool / "state").mkdir()
    off = OutcomeObserver(Settings(spool=spool))
    assert off.retention(lambda: [], now=0.0) == 0 and (spool / "outbox" / "old.json").exists()
    on = OutcomeObserver(Settings(spool=spool, retention_days=7))
    assert on.retention(lambda: [], now=0.0) == 1
    assert names(spool / "outbox") == []
    assert on.page is not None and on.page.dirty  # the page follows
