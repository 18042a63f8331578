"""Reference audio in the spool: what a job may name, what it gets, and every refusal."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from daemon.core.config import Settings, load_settings
from daemon.core.errors import InvalidJobError
from daemon.spool import ensure_layout
from daemon.spool.library import resolve_reference
from jobspec import locate_field
from tests.unprivileged import run_unprivileged

SR = 32000


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(
        None,
        spool=tmp_path / "spool",
        models={"tiny": {"path": str(tmp_path / "m")}},
        default_model="tiny",
        max_reference_bytes=200_000,
        max_reference_s=3.0,
    )
    ensure_layout(s)
    return s


def write_tone(
    path: Path, seconds: float = 1.0, channels: int = 1, fmt: str = "WAV", rate: int = SR
) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    x = np.stack([0.3 * np.sin(2 * np.pi * 330 * (c + 1) * t) for c in range(channels)], 1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, rate, format=fmt)
    return path.read_bytes()


def refusal(settings: Settings, ref: str, fragment: str) -> InvalidJobError:
    with pytest.raises(InvalidJobError) as info:
        resolve_reference(settings, "continue_from", ref, line=4)
    err = info.value
    assert err.error_type == "invalid_job" and err.loc == "continue_from" and err.line == 4
    assert fragment in err.message, err.message
    assert err.hint
    return err


def test_the_layout_has_a_library(settings: Settings) -> None:
    assert settings.library == settings.spool / "library" and settings.library.is_dir()


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_a_library_file_is_read_with_its_facts_and_left_alone(settings: Settings, fmt: str) -> None:
    path = settings.library / f"riff.{fmt.lower()}"
    data = write_tone(path, 1.0, channels=2, fmt=fmt)
    mtime = path.stat().st_mtime_ns
    ref = resolve_reference(settings, "continue_from", f"library/{path.name}")
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert (ref.sample_rate, ref.channels) == (SR, 2)
    assert ref.duration_s == pytest.approx(1.0, abs=0.01)
    assert ref.samples.shape == (2, round(ref.duration_s * SR))
    assert ref.sidecar_fields()["path"] == f"library/{path.name}"
    assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime


def test_an_earlier_result_in_an_outbox_folder(settings: Settings) -> None:
    write_tone(settings.outbox / "team" / "take.flac", 0.5, fmt="FLAC")
    assert resolve_reference(settings, "melody", "outbox/team/take.flac").duration_s == pytest.approx(0.5)


def test_missing_file(settings: Settings) -> None:
    err = refusal(settings, "library/nothing.wav", "does not exist in library/")
    assert "library/" in (err.hint or "")


def test_traversal_and_absolute_paths_are_refused_before_the_disk(settings: Settings) -> None:
    refusal(settings, "library/../work/x.wav", "'..'")
    refusal(settings, "/etc/passwd.wav", "absolute path")
    refusal(settings, "inbox/x.wav", "library/ or outbox/")


def test_symlink_out_of_the_spool_is_refused(settings: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "secret.wav"
    write_tone(outside)
    (settings.library / "link.wav").symlink_to(outside)
    refusal(settings, "library/link.wav", "leads out of the spool")


def test_symlink_inside_the_spool_is_refused_too(settings: Settings) -> None:
    write_tone(settings.outbox / "take.wav")
    (settings.library / "take.wav").symlink_to(settings.outbox / "take.wav")
    refusal(settings, "library/take.wav", "leads out of the spool's library/")


def test_symlinked_folder_is_refused(settings: Settings, tmp_path: Path) -> None:
    write_tone(tmp_path / "elsewhere" / "a.wav")
    (settings.library / "sub").symlink_to(tmp_path / "elsewhere")
    refusal(settings, "library/sub/a.wav", "leads out of the spool")


def test_hard_link_is_refused(settings: Settings) -> None:
    write_tone(settings.outbox / "take.wav")
    os.link(settings.outbox / "take.wav", settings.library / "hard.wav")
    refusal(settings, "library/hard.wav", "hard links")


def test_non_regular_file_is_refused(settings: Settings) -> None:
    os.mkfifo(settings.library / "pipe.wav")
    refusal(settings, "library/pipe.wav", "not a regular file")
    (settings.library / "dir.wav").mkdir()
    refusal(settings, "library/dir.wav", "not a regular file")


def test_size_and_duration_limits(settings: Settings) -> None:
    write_tone(settings.library / "big.wav", 4.0)  # 256 kB of PCM_16 > 200 kB
    refusal(settings, "library/big.wav", "limited to 200000 bytes")
    write_tone(settings.library / "long.flac", 3.5, fmt="FLAC")  # small, but 3.5 s > 3 s
    refusal(settings, "library/long.flac", "limited to 3 s")


def test_unreadable_audio_is_refused(settings: Settings) -> None:
    (settings.library / "fake.wav").write_bytes(b"RIFF....not audio at all" * 10)
    refusal(settings, "library/fake.wav", "not audio soundfile can read")
    (settings.library / "empty.wav").write_bytes(b"")
    refusal(settings, "library/empty.wav", "not audio")


def test_file_the_daemon_cannot_read(settings: Settings) -> None:
    path = settings.library / "private.wav"
    write_tone(path)
    path.chmod(0)
    # As root too (CI): in a child that cannot bypass the permission bits.
    run_unprivileged(lambda: refusal(settings, "library/private.wav", "cannot be read"))


def test_locate_field_finds_the_line_in_a_job_or_batch_or_defaults() -> None:
    single = b"prompt: keep going\n\ncontinue_from: library/a.wav\n"
    assert locate_field(single, "j.yaml", 0, "continue_from") == ("continue_from", 3)
    batch = (
        b"defaults:\n  melody: library/m.wav\njobs:\n  - prompt: one song\n"
        b"  - prompt: two songs\n    melody: library/n.wav\n"
    )
    assert locate_field(batch, "b.yaml", 0, "melody") == ("defaults.melody", 2)
    assert locate_field(batch, "b.yaml", 1, "melody") == ("jobs[1].melody", 6)
