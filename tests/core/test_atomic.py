"""Atomic writes: a reader sees the old file or the whole new one, never a part, never a temp left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from daemon.core.fsio import atomic_write_bytes, atomic_write_text, atomic_writer, temp_name_for

TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp$")


def test_writes_the_bytes_with_a_readable_mode(tmp_path: Path) -> None:
    target = tmp_path / "job.json"
    assert atomic_write_bytes(target, b'{"ok": true}') == target
    assert target.read_bytes() == b'{"ok": true}'
    assert target.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["job.json"]


def test_text_is_utf8(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "t.txt", "café ♪")
    assert (tmp_path / "t.txt").read_bytes() == "café ♪".encode()


def test_replaces_an_existing_file_by_default(tmp_path: Path) -> None:
    target = tmp_path / "a.wav"
    target.write_bytes(b"old")
    old_inode = target.stat().st_ino
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != old_inode  # a new file renamed in, not rewritten in place
    assert os.listdir(tmp_path) == ["a.wav"]


def test_create_new_refuses_to_clobber(tmp_path: Path) -> None:
    target = tmp_path / "a.wav"
    target.write_bytes(b"first")
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"second", create_new=True)
    assert target.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["a.wav"]


def test_create_new_refuses_a_target_that_appears_while_writing(tmp_path: Path) -> None:
    target = tmp_path / "a.wav"
    with pytest.raises(FileExistsError):
        with atomic_writer(target, create_new=True) as fh:
            fh.write(b"mine")
            target.write_bytes(b"theirs")  # another writer wins the race
    assert target.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["a.wav"]


def test_create_new_writes_when_free(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "free.json", b"x", create_new=True)
    assert (tmp_path / "free.json").read_bytes() == b"x"
    assert os.listdir(tmp_path) == ["free.json"]


def test_an_exception_removes_the_temp_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_writer(target) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.json"]


def test_the_target_never_shows_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    with atomic_writer(target) as fh:
        fh.write(b"partial")
        fh.flush()
        listing = os.listdir(tmp_path)
        # only a hidden temp: a spool reader that skips dot-files sees nothing yet
        assert len(listing) == 1
        match = TEMP_RE.match(listing[0])
        assert match and match.group("name") == "result.json"
        assert not target.exists()
        fh.write(b" and the rest")
    assert os.listdir(tmp_path) == ["result.json"]
    assert target.read_bytes() == b"partial and the rest"


def test_temp_names_are_hidden_siblings_and_unique(tmp_path: Path) -> None:
    names = {temp_name_for(tmp_path / "x.wav") for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert name.parent == tmp_path
        assert TEMP_RE.match(name.name)


def test_a_concurrent_reader_sees_only_whole_versions(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    versions = [bytes([65 + i]) * (2048 + 997 * i) for i in range(8)]
    atomic_write_bytes(target, versions[0])
    stop = threading.Event()
    seen: set[bytes] = set()
    bad: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            seen.add(data[:1])
            if data not in versions:
                bad.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for round_ in range(40):
            atomic_write_bytes(target, versions[round_ % len(versions)])
    finally:
        stop.set()
        thread.join()
    assert not bad, f"reader saw torn files of lengths {bad[:5]}"
    assert len(seen) >= 1


def test_a_crash_mid_write_never_creates_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out.wav"
    code = (
        "import os, sys\n"
        "from daemon.core.fsio import atomic_writer\n"
        f"with atomic_writer({str(target)!r}) as fh:\n"
        "    fh.write(b'x' * 100000)\n"
        "    fh.flush()\n"
        "    os._exit(3)\n"  # the process dies: no cleanup runs
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert proc.returncode == 3
    assert not target.exists()
    # what is left is a dot-temp, which the spool never reads
    assert all(TEMP_RE.match(name) for name in os.listdir(tmp_path))


def test_missing_directory_is_an_error_not_a_silent_success(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "nope" / "a.json", b"x")
