"""inbox/<folder>/<job>.yaml: results in outbox/<folder>/, failures in failed/<folder>/, with the
same claim, id and crash guarantees as the inbox itself; deeper or odd folders are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from daemon_harness import DaemonProcess, SpoolView, job_yaml, wait_until, write_config, write_faults


def drop(sp: SpoolView, rel: str, text: str) -> None:
    """Like SpoolView.drop, into an inbox subfolder: a dot-temp there renamed onto the name."""
    target = sp.inbox / rel
    tmp = target.with_name(f".{target.name}.partial")
    tmp.write_text(text)
    tmp.rename(target)


def folder_outcome(sp: SpoolView, folder: str, job_id: str) -> dict | None:
    for path in (sp.outbox / folder / f"{job_id}.json", sp.failed / folder / f"{job_id}.error.json"):
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            continue
    return None


@pytest.mark.slow  # two daemon starts, one of them killed mid-job: about half a minute
def test_subfolder_jobs_land_in_their_folders_and_survive_a_crash(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = write_config(
        tmp_path / "config.yaml",
        tmp_path / "spool",
        tiny_model_dir,
        fault_injection={"kill_on_prompt": "KILL-ME"},
    )
    sp = SpoolView(tmp_path / "spool")
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        for d in ("band", "band/deep", "bad name"):
            (sp.inbox / d).mkdir()
        drop(sp, "band/song.yaml", job_yaml("a song for the band folder", duration=0.5, count=2))
        drop(sp, "band/nope.yaml", job_yaml("asks for a model nobody has", duration=0.5, model="nope"))
        drop(sp, "band/deep/too-deep.yaml", job_yaml("two levels down, never read", duration=0.5))
        drop(sp, "bad name/odd.yaml", job_yaml("in a folder with a space", duration=0.5))
        song = wait_until(lambda: folder_outcome(sp, "band", "song"), 60, what="band/song", alive=daemon)
        assert song["status"] == "completed" and song["source_file"] == "band/song.yaml"
        assert [o["path"] for o in song["outputs"]] == ["band/song-v1.wav", "band/song-v2.wav"]
        assert (sp.outbox / "band" / "song-v2.wav").is_file()
        nope = wait_until(lambda: folder_outcome(sp, "band", "nope"), 30, what="band/nope", alive=daemon)
        assert nope["error"]["type"] == "unknown_model"
        assert (sp.failed / "band" / "nope.yaml").is_file()
        # The same name again: a new id, never an overwrite.
        drop(sp, "band/song.yaml", job_yaml("the band song, second take", duration=0.5))
        again = wait_until(lambda: folder_outcome(sp, "band", "song-2"), 60, what="band/song-2", alive=daemon)
        assert again["request"]["prompt"] == "the band song, second take"
        # Killed while running a folder's job: it is still that folder's job after the restart.
        drop(sp, "band/crash.yaml", job_yaml("KILL-ME while the band waits", duration=0.5))
        assert daemon.wait_exit(60) != 0
        write_faults(config, None)
        daemon.start()
        crash = wait_until(lambda: folder_outcome(sp, "band", "crash"), 60, what="band/crash", alive=daemon)
        assert crash["status"] == "completed" and crash["source_file"] == "band/crash.yaml"
        page = sp.outbox / "index.html"
        wait_until(
            lambda: page.exists() and "band/crash.wav" in page.read_text(), 20, what="the page", alive=daemon
        )
        assert daemon.stop() == 0
        log = daemon.full_log()
    assert (sp.inbox / "band" / "deep" / "too-deep.yaml").is_file()
    assert (sp.inbox / "bad name" / "odd.yaml").is_file()
    assert "band/deep/ is more than one folder deep" in log
    assert "bad name/: folder name 'bad name' is not allowed" in log
    assert sorted(p.name for p in sp.outbox.iterdir() if p.suffix == ".json") == []  # nothing at the top
    text = page.read_text()
    assert '<option value="band">' in text and 'src="band/song-v1.wav"' in text
    assert 'href="../failed/band/nope.yaml"' in text
