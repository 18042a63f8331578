"""The daemon end to end, as a real subprocess on a tmp spool with the tiny model: the ways a
job file arrives, what comes out, and that nothing stops the next good job.

One daemon serves the whole module (starting one costs ~10 s of imports on a small box). Its
rescan interval is long, so every pickup here must come from inotify: a drop style whose
event the daemon misses would time out instead of passing late through a rescan.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from daemon_harness import DaemonProcess, SpoolView, job_yaml, run_cli, wait_until, write_config

PICKUP_TIMEOUT_S = 60.0  # far below the rescan interval: only inotify can make it


class Served:
    def __init__(self, daemon: DaemonProcess, spool: SpoolView, config: Path, scratch: Path) -> None:
        self.daemon = daemon
        self.spool = spool
        self.config = config
        self.scratch = scratch  # outside the spool: where "user" files are written first


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("daemon-pickup")
    config = write_config(root / "config.yaml", root / "spool", tiny_model_dir, rescan_interval_s=600)
    daemon = DaemonProcess(config, root / "daemon.log")
    try:
        daemon.start()
        scratch = root / "scratch"
        scratch.mkdir()
        yield Served(daemon, SpoolView(root / "spool"), config, scratch)
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_completed(body: dict, source: str, spool: SpoolView) -> None:
    assert body["status"] == "completed", body
    assert body["source_file"] == source
    for out in body["outputs"]:
        audio = spool.outbox / out["path"]
        assert audio.stat().st_size == out["bytes"]
        assert _sha(audio) == out["sha256"]


def test_drop_styles_cp_editor_rename_rsync_dot_temp(served: Served) -> None:
    sp = served.spool
    # cp: the file is created under its final name and written; close-write reports it.
    src = served.scratch / "copied.yaml"
    src.write_text(job_yaml("copied into the inbox with cp"))
    shutil.copy(src, sp.inbox / "copied.yaml")
    # An editor: writes a swap/backup name, then renames it over the real name.
    swp = sp.inbox / ".edited.yaml.swp"
    swp.write_text(job_yaml("saved by an editor via rename"))
    os.rename(swp, sp.inbox / "edited.yaml")
    # rsync: a dot-temp with a random suffix, written in pieces, renamed when complete.
    tmp = sp.inbox / ".synced.yaml.XyZ12"
    text = job_yaml("transferred by rsync with a dot temp")
    with open(tmp, "w") as fh:
        fh.write(text[:10])
        fh.flush()
        time.sleep(0.3)  # a dot-name is never read, however long it sits half-written
        fh.write(text[10:])
    os.rename(tmp, sp.inbox / "synced.yaml")

    got = sp.wait_sources(
        ["copied.yaml", "edited.yaml", "synced.yaml"], PICKUP_TIMEOUT_S, alive=served.daemon
    )
    for source, job_id in (("copied.yaml", "copied"), ("edited.yaml", "edited"), ("synced.yaml", "synced")):
        assert len(got[source]) == 1, got[source]
        body = got[source][0]
        assert body["job_id"] == job_id
        _assert_completed(body, source, sp)
    assert got["edited.yaml"][0]["request"]["prompt"] == "saved by an editor via rename"
    # The temp names were never picked up as jobs of their own.
    assert not any(".swp" in s or "XyZ12" in s for s in sp.by_source())


def test_id_collision_gets_suffix_and_overwrites_nothing(served: Served) -> None:
    sp = served.spool
    sp.drop("same.yaml", job_yaml("the first job named same", seed=1))
    first = sp.wait_outcome("same", PICKUP_TIMEOUT_S, alive=served.daemon)
    _assert_completed(first, "same.yaml", sp)
    wav_sha = _sha(sp.outbox / "same.wav")
    json_bytes = (sp.outbox / "same.json").read_bytes()

    sp.drop("same.yaml", job_yaml("the second job named same", seed=2))
    second = sp.wait_outcome("same-2", PICKUP_TIMEOUT_S, alive=served.daemon)
    _assert_completed(second, "same.yaml", sp)
    assert second["request"]["prompt"] == "the second job named same"
    assert second["outputs"][0]["path"] == "same-2.wav"
    # The first result is untouched, byte for byte.
    assert _sha(sp.outbox / "same.wav") == wav_sha
    assert (sp.outbox / "same.json").read_bytes() == json_bytes


def test_bad_job_never_stops_the_next_good_one(served: Served) -> None:
    sp = served.spool
    bad_bytes = b'prompt: "a job with a typo in a key"\nduration: 0.5\ntemprature: 0.9\n'
    sp.drop("bad-key.yaml", bad_bytes.decode())
    sp.drop("bad-yaml.yaml", 'prompt: "unterminated\nduration: [1, 2\n')
    (sp.inbox / "notes.txt").write_text("not a job")  # left alone, never moved
    sp.drop("good-after-bad.yaml", job_yaml("the good job after two bad ones"))

    got = sp.wait_sources(
        ["bad-key.yaml", "bad-yaml.yaml", "good-after-bad.yaml"], PICKUP_TIMEOUT_S, alive=served.daemon
    )
    _assert_completed(got["good-after-bad.yaml"][0], "good-after-bad.yaml", sp)
    for source in ("bad-key.yaml", "bad-yaml.yaml"):
        (body,) = got[source]
        assert body["status"] == "failed"
        assert body["error"]["type"] == "invalid_job"
        assert body["error"]["message"]
        assert body["error"]["details"], body
    key_err = got["bad-key.yaml"][0]["error"]
    assert any("temprature" in d["loc"] and d["line"] == 3 for d in key_err["details"]), key_err
    # The original bytes are kept in failed/, untouched.
    assert (sp.failed / "bad-key.yaml").read_bytes() == bad_bytes
    assert (sp.inbox / "notes.txt").read_text() == "not a job"
    assert "notes.txt is not a job file" in served.daemon.log()


def test_batch_file_gives_one_sidecar_per_job(served: Served) -> None:
    sp = served.spool
    batch = {
        "defaults": {"duration": 0.5},
        "jobs": [
            {"prompt": "batch job one, a calm piano"},
            {"prompt": "batch job two, a fast drum loop", "seed": 7},
            {"prompt": "batch job three, named", "id": "batch-named"},
        ],
    }
    sp.drop("batch.yaml", yaml.safe_dump(batch))
    for job_id in ("batch.1", "batch.2", "batch-named"):
        _assert_completed(sp.wait_outcome(job_id, PICKUP_TIMEOUT_S, alive=served.daemon), "batch.yaml", sp)
    assert len(sp.by_source()["batch.yaml"]) == 3
    assert sp.outcome("batch.2")["request"]["seed"] == 7
    # The last job of the batch releases the claim.
    wait_until(lambda: not sp.job_files(sp.work), 10, what="work/ to empty")


def test_symlink_and_fifo_are_rejected_and_block_nothing(served: Served) -> None:
    sp = served.spool
    target = served.scratch / "target.yaml"
    target.write_text(job_yaml("a job reached through a symlink"))
    # Both arrive by rename (as rsync -l / a mover would), which inotify reports as moved-to.
    os.symlink(target, sp.inbox / ".linked.yaml.tmp1")
    os.rename(sp.inbox / ".linked.yaml.tmp1", sp.inbox / "linked.yaml")
    os.mkfifo(sp.inbox / ".pipe.yaml.tmp1")
    os.rename(sp.inbox / ".pipe.yaml.tmp1", sp.inbox / "pipe.yaml")
    sp.drop("after-special.yaml", job_yaml("the good job after a symlink and a fifo"))

    got = sp.wait_sources(
        ["linked.yaml", "pipe.yaml", "after-special.yaml"], PICKUP_TIMEOUT_S, alive=served.daemon
    )
    _assert_completed(got["after-special.yaml"][0], "after-special.yaml", sp)
    for source, word in (("linked.yaml", "symbolic link"), ("pipe.yaml", "FIFO")):
        (body,) = got[source]
        assert body["error"]["type"] == "invalid_job"
        assert word in body["error"]["message"]
    # The link itself moved to failed/ (not its target), the target is untouched.
    assert (sp.failed / "linked.yaml").is_symlink()
    assert target.read_text() == job_yaml("a job reached through a symlink")
    assert not (sp.inbox / "linked.yaml").exists() and not (sp.inbox / "pipe.yaml").exists()


def test_submit_wait_exit_codes(served: Served) -> None:
    sp = served.spool
    ok = served.scratch / "submitted-ok.yaml"
    ok.write_text(job_yaml("submitted and waited for"))
    t0 = time.monotonic()
    res = run_cli(served.config, "submit", "--wait", "--timeout", "60", str(ok))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"completed: {sp.outbox / 'submitted-ok.json'}" in res.stdout
    # The drop must be seen by inotify (the rescan is 10 minutes away).
    assert time.monotonic() - t0 < 45

    unknown = served.scratch / "submitted-unknown.yaml"
    unknown.write_text(job_yaml("asks for a model this daemon lacks", model="nosuchmodel"))
    res = run_cli(served.config, "submit", "--wait", "--timeout", "60", str(unknown))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "unknown_model" in res.stdout
    assert sp.outcome("submitted-unknown")["error"]["type"] == "unknown_model"

    before = {d: sp.job_files(getattr(sp, d)) for d in ("inbox", "work", "outbox", "failed")}
    invalid = served.scratch / "submitted-invalid.yaml"
    invalid.write_text('prompt: "x"\nduration: -3\n')
    res = run_cli(served.config, "submit", "--wait", str(invalid))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "nothing submitted" in res.stderr
    assert "duration" in res.stderr
    time.sleep(0.5)
    after = {d: sp.job_files(getattr(sp, d)) for d in ("inbox", "work", "outbox", "failed")}
    assert after == before  # the spool was not touched


def test_burst_of_50_jobs_each_done_exactly_once(served: Served) -> None:
    sp = served.spool
    names = [f"burst-{i:02d}.yaml" for i in range(50)]
    for i, name in enumerate(names):
        text = job_yaml(f"burst job number {i}", duration=0.5, seed=i)
        if i % 2:
            sp.drop(name, text)
        else:
            (sp.inbox / name).write_text(text)  # written in place: close-write
    got = sp.wait_sources(names, 240, alive=served.daemon)
    for i, name in enumerate(names):
        assert len(got[name]) == 1, (name, got[name])
        body = got[name][0]
        _assert_completed(body, name, sp)
        assert body["job_id"] == name[:-5]
        assert body["request"]["seed"] == i
    wavs = [n for n in sp.job_files(sp.outbox) if n.startswith("burst-") and n.endswith(".wav")]
    assert len(wavs) == 50
    assert not [n for n in sp.job_files(sp.inbox) if n.startswith("burst-")]
    wait_until(lambda: not sp.job_files(sp.work), 10, what="work/ to empty")
    assert not list(sp.failed.glob("burst-*"))
