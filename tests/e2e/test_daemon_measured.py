"""Measured music through the real daemon and the tiny model: every output's sidecar carries its
analysis and how far it is from what the job asked; the page shows tempo and key by the player."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import yaml
from daemon_harness import DaemonProcess, SpoolView, write_config

from daemon.audio.analysis import analyze
from daemon.audio.encode import read_audio
from jobspec import result_schema

TIMEOUT_S = 120.0


def test_every_output_is_measured_against_what_was_asked(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path / "config.yaml", tmp_path / "spool", tiny_model_dir)
    sp = SpoolView(tmp_path / "spool")
    job = {
        "prompt": "a measured tune",
        "duration": 4.0,
        "seed": 11,
        "count": 2,
        "bpm": 120,
        "key": "A# minor",
        "time_signature": "3/4",
    }
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        sp.drop("measured.yaml", yaml.safe_dump(job))
        sp.drop("plain.yaml", yaml.safe_dump({"prompt": "a plain tune", "duration": 1.0, "seed": 3}))
        body = sp.wait_outcome("measured", TIMEOUT_S, alive=daemon)
        plain = sp.wait_outcome("plain", TIMEOUT_S, alive=daemon)
        assert daemon.stop() == 0
    assert body["status"] == "completed", body
    assert body["request"]["key"] == "Bb minor"  # normalised
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(body, result_schema())
    for out in body["outputs"]:
        a = out["analysis"]
        audio, rate = read_audio(sp.outbox / out["path"])
        again = analyze(audio, rate, "3/4")  # the analysis is of the file as written
        assert a["tempo_bpm"] == (None if again.tempo_bpm is None else round(again.tempo_bpm, 2))
        assert a["key"] == again.key and a["beats_s"] == again.beats_s
        assert set(a["downbeats_s"]) <= set(a["beats_s"])
        asked = a["asked"]
        assert (asked["bpm"], asked["key"], asked["time_signature"]) == (120, "Bb minor", "3/4")
        if a["tempo_bpm"] is not None:
            assert asked["tempo_error_bpm"] == pytest.approx(a["tempo_bpm"] - 120, abs=0.011)
        assert asked["key_relation"] in ("same", "relative", "parallel", "fifth", "other", None)
    assert body["timings"]["analysis_s"] > 0
    assert plain["outputs"][0]["analysis"]["asked"] is None  # nothing asked, nothing to compare
    page = (sp.outbox / "index.html").read_text(encoding="utf-8")
    shown = body["outputs"][0]["analysis"]
    tempo = "tempo\u00a0n/a" if shown["tempo_bpm"] is None else f"{shown['tempo_bpm']:.1f}\u00a0BPM"
    assert f'<span class="tempo">{tempo}</span>' in page
    key = (shown["key"] or "key n/a").replace(" ", "\u00a0")
    assert f'<span class="key">{key}</span>' in page
    json.dumps(body)  # plain JSON all through


def test_a_loop_job_is_n_bars_at_the_asked_tempo_with_a_clean_seam(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import numpy as np

    config = write_config(tmp_path / "config.yaml", tmp_path / "spool", tiny_model_dir)
    sp = SpoolView(tmp_path / "spool")
    job = {"prompt": "a drum loop", "seed": 4, "bpm": 150, "key": "E minor", "loop": {"bars": 2}}
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        sp.drop("loop.yaml", yaml.safe_dump(job))
        body = sp.wait_outcome("loop", TIMEOUT_S, alive=daemon)
        assert daemon.stop() == 0
    assert body["status"] == "completed", body
    assert body["request"]["duration"] == 4.8  # 1.5 loop lengths when left out
    (out,) = body["outputs"]
    audio, rate = read_audio(sp.outbox / out["path"])
    exact = round(2 * 4 * 60 / 150 * rate)  # 2 bars of 4/4 at 150 BPM: 3.2 s
    assert audio.shape[-1] == out["frames"] == out["loop"]["samples"] == exact
    assert out["loop"]["seamless"] and out["loop"]["bpm"] == 150
    assert out["loop"]["stretcher"] == ("rubberband" if shutil.which("rubberband") else "librosa")
    # The seam, measured here on the file as written (after loudness and PCM rounding).
    steps = np.abs(np.diff(audio, axis=-1))
    assert np.max(np.abs(audio[:, -1] - audio[:, 0])) <= np.percentile(steps, 99)
    assert "bpm: 150. key: E minor" in out["tags"]["comment"]
    # The file's acid chunk says what a DAW needs to loop it: 8 beats of 4/4 at 150 BPM.
    data = (sp.outbox / out["path"]).read_bytes()
    at = data.index(b"acid")
    assert struct.unpack("<IHHfIHHf", data[at + 8 : at + 32])[4:] == (8, 4, 4, 150.0)


def test_best_of_n_keeps_the_best_scored_take_and_it_comes_back_from_its_seed(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import numpy as np

    config = write_config(tmp_path / "config.yaml", tmp_path / "spool", tiny_model_dir)
    sp = SpoolView(tmp_path / "spool")
    asked = {"prompt": "a tune to choose", "duration": 3.0, "bpm": 100, "key": "G major"}
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        sp.drop("best.yaml", yaml.safe_dump({**asked, "seed": 40, "candidates": 3, "keep_candidates": True}))
        body = sp.wait_outcome("best", TIMEOUT_S, alive=daemon)
        chosen = next(c for c in body["candidates"] if c["chosen"])
        sp.drop("again.yaml", yaml.safe_dump({**asked, "seed": chosen["seed"]}))
        again = sp.wait_outcome("again", TIMEOUT_S, alive=daemon)
        assert daemon.stop() == 0
    cands = body["candidates"]
    assert [c["seed"] for c in cands] == [40, 41, 42]
    assert chosen == min(cands, key=lambda c: (c["score"], c["candidate"]))
    # The score is what the documented rule gives from the recorded measures.
    steps = {"same": 0, "relative": 1, "parallel": 1, "fifth": 2, "other": 3}
    for c in cands:
        tempo = 30.0 if c["tempo_error_bpm"] is None else abs(c["tempo_error_bpm"])
        key = 12.0 if c["key_relation"] is None else 4 * steps[c["key_relation"]]
        assert c["score"] == pytest.approx(tempo + key, abs=0.02)
    paths = sorted(o["path"] for o in body["outputs"])
    assert paths == sorted(["best.wav", *(f"best-c{c['candidate']}.wav" for c in cands if not c["chosen"])])
    assert body["outputs"][0]["path"] == "best.wav" and body["outputs"][0]["seed"] == chosen["seed"]
    best, _ = read_audio(sp.outbox / "best.wav")
    single, _ = read_audio(sp.outbox / again["outputs"][0]["path"])
    # Its seed alone makes the same take again (the rows of a decode are independent).
    assert best.shape == single.shape and np.max(np.abs(best - single)) < 2e-3
