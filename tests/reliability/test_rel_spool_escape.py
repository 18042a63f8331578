"""Attacks on the spool's edges, through the running daemon: nothing outside the spool is read,
moved or deleted, and a reference cannot blow up the daemon's memory.

Each test is one attack that broke an earlier daemon (docs/reliability.md, "Attacks"): an inbox
folder swapped for a link while its job waits to be claimed, `cancel` of a job in a linked
folder, an inbox folder named like the page, a sidecar naming another job's files for retention,
a reference that decodes to gigabytes (its header honest, or lying), and the same id in two
inbox folders. The daemon is the real `dgx-music serve` on the tiny model; one daemon serves the
module (retention's bait is planted before it starts, as its first pass runs at start).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from reliability.daemonproc import DaemonProc, drop, job_yaml, record_figures, wait_until, write_config

from tests.daemon_harness import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DAY = 86400.0
MAX_REFERENCE_S = 30.0
FLOOD = 400


@dataclass
class Spool:
    root: Path
    config: Path
    daemon: DaemonProc
    outside: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    def error(self, rel: str) -> dict:
        return json.loads((self.root / "failed" / rel).read_bytes())


def _aged(path: Path, data: bytes, age_days: float) -> None:
    path.write_bytes(data)
    t = time.time() - age_days * DAY
    os.utime(path, (t, t))


@pytest.fixture(scope="module")
def sp(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Spool]:
    base = tmp_path_factory.mktemp("escape")
    root = base / "spool"
    outbox = root / "outbox"
    outbox.mkdir(parents=True)
    # Retention's bait: an old sidecar that names another (young) job's files, and its own audio.
    _aged(outbox / "victim.wav", b"RIFF-victim", 0)
    _aged(
        outbox / "victim.json",
        json.dumps({"job_id": "victim", "outputs": [{"path": "victim.wav"}]}).encode(),
        0,
    )
    _aged(outbox / "evil.wav", b"RIFF-evil", 40)
    evil = {
        "job_id": "evil",
        "outputs": [{"path": "victim.wav"}, {"path": "victim.json"}, {"path": "evil.wav"}],
    }
    _aged(outbox / "evil.json", json.dumps(evil).encode(), 40)
    outside = base / "outside"
    outside.mkdir()
    config = write_config(
        base / "config.yaml",
        root,
        tiny_model_dir,
        retention_days=30,
        max_reference_s=MAX_REFERENCE_S,
        rescan_interval_s=1.0,
    )
    daemon = DaemonProc(config, base / "daemon.log", env={"OMP_NUM_THREADS": "1"})
    daemon.start().wait_ready()
    try:
        yield Spool(root, config, daemon, outside)
        assert daemon.alive(), daemon.log_tail()
    finally:
        daemon.close()


def test_retention_removes_only_the_expired_jobs_own_files(sp: Spool) -> None:
    outbox = sp.root / "outbox"
    sp.daemon.wait_log("retention: removed outbox/{evil.json", 60)
    assert not (outbox / "evil.json").exists() and not (outbox / "evil.wav").exists()
    assert (outbox / "victim.wav").read_bytes() == b"RIFF-victim"
    assert (outbox / "victim.json").exists()
    record_figures("spool_escape", {"retention_sidecar_names_other_job": "held"})


def test_folder_swapped_for_a_link_before_its_claim_moves_nothing_from_outside(sp: Spool) -> None:
    """The claimer is kept busy (400 job files renamed in); a folder's job waits behind them and
    the folder is swapped for a link to a directory outside the spool holding a job of the same
    name. Nothing is claimed through the link."""
    inbox = sp.inbox
    (inbox / "sw").mkdir()
    victim = sp.outside / "swx.yaml"
    victim_bytes = job_yaml("OUTSIDE the spool: must never be claimed").encode()
    victim.write_bytes(victim_bytes)
    time.sleep(1.0)  # the recursive watch on the new folder is in place
    for i in range(FLOOD):
        drop(inbox, f"busy{i:03d}.yaml", b"prompt: [unclosed\n")
    (inbox / "sw" / "swx.yaml").write_text(job_yaml("inside the spool"))
    os.rename(inbox / "sw", inbox / ".sw-old")
    os.symlink(sp.outside, inbox / "sw")
    failed = sp.root / "failed"
    wait_until(
        lambda: all((failed / f"busy{i:03d}.error.json").exists() for i in range(FLOOD)),
        240,
        what="the flood to be refused",
        alive=sp.daemon,
    )
    time.sleep(3.0)  # a rescan or two
    assert victim.read_bytes() == victim_bytes, "the file outside the spool was taken"
    assert (inbox / ".sw-old" / "swx.yaml").exists()
    assert "sw/swx.yaml" not in json.dumps(_all_sidecars(sp.root))
    assert os.path.islink(inbox / "sw")
    os.unlink(inbox / "sw")
    record_figures("spool_escape", {"inbox_folder_swapped_for_link": "held", "claims_ahead_of_it": FLOOD})


def test_cancel_never_enters_a_linked_inbox_folder(sp: Spool) -> None:
    other = sp.outside / "cancel"
    other.mkdir()
    vict = other / "vict.yaml"
    vict.write_text(job_yaml("outside, named like a job to cancel"))
    os.symlink(other, sp.inbox / "lnk2")
    try:
        done = run_cli(sp.config, "cancel", "vict", "--timeout", "1")
        assert vict.exists(), done.stdout + done.stderr
        assert not (sp.root / "failed" / "lnk2").exists()
        assert "cancelled:" not in done.stdout, done.stdout
        record_figures("spool_escape", {"cancel_in_linked_folder": "held"})
    finally:
        os.unlink(sp.inbox / "lnk2")


def test_inbox_folder_named_like_the_page_is_refused_and_the_page_lives(sp: Spool) -> None:
    page = sp.root / "outbox" / "index.html"
    wait_until(page.exists, 60, what="the page", alive=sp.daemon)  # written after retention's pass
    folder = sp.inbox / "index.html"
    folder.mkdir()
    drop(folder, "first.yaml", job_yaml("a job in a folder named like the page"))
    wait_until(
        lambda: (sp.root / "failed" / "first.error.json").exists(), 60, what="refusal", alive=sp.daemon
    )
    err = sp.error("first.error.json")
    assert err["error"]["type"] == "invalid_job", err
    assert "index.html" in err["error"]["message"] and err["source_file"] == "index.html/first.yaml", err
    assert (sp.root / "failed" / "first.yaml").read_text() == job_yaml(
        "a job in a folder named like the page"
    )
    assert page.is_file()
    before = page.stat().st_mtime_ns
    drop(sp.inbox, "after-page.yaml", job_yaml("the page is written again after this one", duration=0.1))
    wait_until(
        lambda: page.is_file() and page.stat().st_mtime_ns != before, 120, what="page", alive=sp.daemon
    )
    assert "after-page" in page.read_text()
    record_figures("spool_escape", {"inbox_folder_named_like_page": "held"})


def _silence_flac(seconds: float, rate: int = 48_000, channels: int = 2) -> bytes:
    out = io.BytesIO()
    block = np.zeros((rate * 10, channels), dtype=np.float32)
    with sf.SoundFile(out, "w", samplerate=rate, channels=channels, format="FLAC") as fh:
        for _ in range(int(seconds // 10)):
            fh.write(block)
    return out.getvalue()


def _without_length(flac: bytes) -> bytes:
    """The same FLAC with STREAMINFO's total-samples field zeroed: 'length unknown'."""
    raw = bytearray(flac)
    assert raw[:4] == b"fLaC"
    word = int.from_bytes(raw[18:26], "big") & ~((1 << 36) - 1)
    raw[18:26] = word.to_bytes(8, "big")
    return bytes(raw)


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_reference_bombs_are_refused_within_bounded_memory(sp: Spool) -> None:
    """2400 s of stereo silence in FLAC is about 400 KiB and decodes to 880 MiB of float32. One
    says its length (refused from the header), one does not (refused once the decoded audio passes
    the limit). The daemon's peak RSS (VmHWM) may rise by what max_reference_s allows, not more."""
    library = sp.root / "library"
    bomb = _silence_flac(2400)
    (library / "bomb.flac").write_bytes(bomb)
    (library / "liar.flac").write_bytes(_without_length(bomb))
    pid = sp.daemon.pid
    before = _hwm_kb(pid)
    rises = {}
    for name in ("bomb", "liar"):
        drop(sp.inbox, f"ref-{name}.yaml", job_yaml("continue a bomb", continue_from=f"library/{name}.flac"))
        path = sp.root / "failed" / f"ref-{name}.error.json"
        wait_until(path.exists, 120, what=f"{name} refused", alive=sp.daemon)
        err = json.loads(path.read_bytes())
        assert err["error"]["type"] == "invalid_job", err
        assert f"limited to {MAX_REFERENCE_S:g} s" in err["error"]["message"], err
        rises[name] = (_hwm_kb(pid) - before) / 1024
    # max_reference_s of 48 kHz stereo float32 is 11 MiB: the bound, with room for the file's bytes
    # and the decoder; the whole bomb would be 880 MiB.
    bound_mib = MAX_REFERENCE_S * 48_000 * 2 * 4 / 2**20 + 48
    assert all(r < bound_mib for r in rises.values()), (rises, bound_mib)
    assert "length" in sp.error("ref-liar.error.json")["error"]["message"]
    record_figures(
        "spool_escape",
        {
            "reference_bomb": "held",
            "reference_bomb_lying_header": "held",
            "bomb_file_kib": len(bomb) // 1024,
            "bomb_hwm_rise_mib": round(rises["bomb"], 1),
            "liar_hwm_rise_mib": round(rises["liar"], 1),
            "hwm_bound_mib": round(bound_mib, 1),
        },
    )


def test_same_id_in_two_folders_keeps_its_id_in_both(sp: Spool) -> None:
    for folder in ("f1", "f2"):
        (sp.inbox / folder).mkdir()
    time.sleep(1.0)
    for folder in ("f1", "f2"):
        drop(sp.inbox / folder, "dup.yaml", job_yaml(f"the same id in {folder}", duration=0.1))
    outbox = sp.root / "outbox"
    wait_until(
        lambda: (outbox / "f1" / "dup.json").exists() and (outbox / "f2" / "dup.json").exists(),
        180,
        what="both dup results",
        alive=sp.daemon,
    )
    assert not list(outbox.glob("f*/dup-2*"))
    record_figures("spool_escape", {"same_id_in_two_folders": "held"})


def _all_sidecars(root: Path) -> list[dict]:
    out = []
    for where in ("outbox", "failed"):
        for p in (root / where).rglob("*.json"):
            if not p.name.startswith("."):
                try:
                    out.append(json.loads(p.read_bytes()))
                except ValueError:
                    pass
    return out
