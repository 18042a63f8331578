"""Songs with lyrics (ACE-Step 1.5, the tiny pipeline) through the real daemon beside a MusicGen
model: 48 kHz stereo of the asked length with lyrics and licence in the sidecar and on the page
(in Chromium), refusals naming the models that can, a song alone and batched with another job
giving the same audio, and a cancel in the middle of the denoising."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from daemon_harness import DaemonProcess, SpoolView, job_yaml, run_cli, wait_until, write_config

pytestmark = pytest.mark.slow  # one daemon, about ten tiny songs

LYRICS = "[verse]\nMorning light on the harbour wall\n[chorus]\nHold on, the tide is turning"


def _song(prompt: str, **fields: Any) -> str:
    return job_yaml(prompt, **{"duration": 1.0, "steps": 3, **fields})


def ffprobe(path: Path) -> dict[str, Any]:
    cmd = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout)


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_acestep_dir: Path
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("songs")
    config = write_config(
        root / "config.yaml",
        root / "spool",
        tiny_model_dir,
        models={"tiny": {"path": str(tiny_model_dir)}, "song": {"path": str(tiny_acestep_dir)}},
        default_model="song",
        dtype="float32",
        max_batch=4,
    )
    sp = SpoolView(root / "spool")
    with DaemonProcess(config, root / "daemon.log") as daemon:
        daemon.start()
        sp.drop(
            "ballad.yaml",
            _song(
                "a slow ballad, piano and a warm voice",
                duration=2.0,
                seed=11,
                lyrics=LYRICS,
                language="en",
                bpm=72,
                key="Gb major",
                time_signature="3/4",
                output={"format": "flac"},
            ),
        )
        sp.drop("mg-lyrics.yaml", job_yaml("a tune", duration=0.5, model="tiny", lyrics="[verse]\nla"))
        sp.drop("song-melody.yaml", _song("a tune", melody="library/tune.wav"))
        sp.drop("turbo-guided.yaml", _song("a tune", guidance=5.0))
        sp.drop("bad-key.yaml", _song("a tune", key="H minor"))
        sp.drop("fast.yaml", _song("a tune", bpm=500))
        sp.drop("alone.yaml", _song("indie pop with handclaps", seed=21, lyrics=LYRICS))
        for job_id in ("ballad", "mg-lyrics", "song-melody", "turbo-guided", "bad-key", "fast", "alone"):
            sp.wait_outcome(job_id, 180, alive=daemon)
        # Queued behind a long song, two jobs that can share a call are batched together.
        sp.drop("long.yaml", _song("a long song to wait behind", duration=4.0, steps=60, seed=1))
        sp.wait_running("long", 60, alive=daemon)
        sp.drop("pair-a.yaml", _song("indie pop with handclaps", seed=21, lyrics=LYRICS))
        sp.drop("pair-b.yaml", _song("indie pop with handclaps", seed=77, lyrics=LYRICS))
        for job_id in ("long", "pair-a", "pair-b"):
            sp.wait_outcome(job_id, 240, alive=daemon)
        # Cancelled while it denoises: progress has moved, the song is not finished.
        sp.drop("endless.yaml", _song("a song nobody waits for", duration=60.0, steps=200, seed=3))
        wait_until(
            lambda: any(r.get("job_id") == "endless" and r.get("frames_done", 0) > 0 for r in sp.running()),
            120,
            what="endless to be denoising",
            alive=daemon,
        )
        cancel = run_cli(config, "cancel", "endless")
        assert cancel.returncode == 0, cancel.stderr
        sp.wait_outcome("endless", 120, alive=daemon)
        page = sp.outbox / "index.html"
        wait_until(lambda: page.exists() and "ballad" in page.read_text(), 20, what="the page", alive=daemon)
        assert daemon.stop() == 0, daemon.log_tail()
        log = daemon.log()
    assert "Traceback" not in log, log
    return {"spool": sp, "log": log, "page": page}


def test_a_song_with_lyrics_is_48k_stereo_of_the_asked_length_with_its_provenance(
    run: dict[str, Any],
) -> None:
    sp: SpoolView = run["spool"]
    body = sp.outcome("ballad")
    assert body is not None and body["status"] == "completed", body
    assert body["model"]["family"] == "ace-step" and body["model"]["license"] == "mit"
    assert body["model"]["setup"]["family"] == "ace-step"
    request = body["request"]
    assert request["lyrics"] == LYRICS + "\n" or request["lyrics"] == LYRICS
    assert (request["language"], request["bpm"], request["key"], request["time_signature"]) == (
        "en",
        72,
        "F# major",  # normalised
        "3/4",
    )
    (out,) = body["outputs"]
    path = sp.outbox / out["path"]
    audio, rate = sf.read(path, always_2d=True)
    assert rate == 48000 and audio.shape == (96000, 2)
    assert np.abs(audio).max() > 0.01
    if shutil.which("ffprobe"):
        stream = ffprobe(path)["streams"][0]
        assert (int(stream["sample_rate"]), int(stream["channels"])) == (48000, 2)
        assert abs(float(stream["duration"]) - 2.0) < 1e-3
        tags = ffprobe(path)["format"]["tags"]  # the file carries its words, for a player to show
        assert (tags["LYRICS"], tags["LANGUAGE"]) == (LYRICS.strip(), "en")
    assert body["reproducibility"]["batch_mates"] == "independent"


@pytest.mark.parametrize(
    ("job_id", "words"),
    [
        ("mg-lyrics", ["'tiny' is of the musicgen family and cannot honour 'lyrics'", "`model: song`"]),
        ("song-melody", ["'song' is of the ace-step family and cannot honour 'melody'", "`model: tiny`"]),
        ("turbo-guided", ["turbo checkpoint", "guidance"]),
        ("bad-key", ["is not a key"]),
        ("fast", ["bpm"]),
    ],
)
def test_refusals_say_why_and_name_the_models_that_can(
    run: dict[str, Any], job_id: str, words: list[str]
) -> None:
    body = run["spool"].outcome(job_id)
    assert body is not None and body["status"] == "failed", body
    error = body["error"]
    assert error["type"] == "invalid_job"
    text = f"{error['message']} {error.get('hint')} {json.dumps(error.get('details'))}"
    for word in words:
        assert word in text, (word, error)


def test_a_song_is_the_same_alone_and_batched_with_another_job(run: dict[str, Any]) -> None:
    sp: SpoolView = run["spool"]
    assert "decoding 2 jobs as one batch: pair-a, pair-b" in run["log"]
    alone, pair_a, pair_b = (sp.outcome(j) for j in ("alone", "pair-a", "pair-b"))
    assert alone and pair_a and pair_b
    read = {
        j: sf.read(sp.outbox / b["outputs"][0]["path"])[0]
        for j, b in (("a", alone), ("p", pair_a), ("b", pair_b))
    }
    np.testing.assert_array_equal(read["a"], read["p"])
    assert not np.array_equal(read["p"], read["b"])


def test_cancel_stops_a_song_in_the_middle_of_its_denoising(run: dict[str, Any]) -> None:
    body = run["spool"].outcome("endless")
    assert body is not None and body["status"] == "cancelled", body
    assert not list(run["spool"].outbox.glob("endless*.wav"))


def test_the_page_shows_the_lyrics_as_text_and_the_licence(run: dict[str, Any]) -> None:
    from test_daemon_outbox_page import DomSummary, run_chromium

    dumped = run_chromium("--dump-dom", run["page"].resolve().as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = DomSummary()
    dom.feed(dumped.stdout)
    text = " ".join(" ".join(dom.text).split())
    assert "[verse] Morning light on the harbour wall [chorus] Hold on, the tide is turning" in text
    assert "(cpu, float32, ace-step, licence mit)" in text
    lyrics = [a for a in dom.find("pre") if a.get("class") == "lyrics"]
    assert lyrics and lyrics[0].get("lang") == "en"


def test_metrics_are_labelled_by_family(run: dict[str, Any]) -> None:
    text = (run["spool"].state / "metrics.prom").read_text()
    assert 'family="ace-step"' in text
    assert "dgx_music_audio_seconds_total{" in text
