"""Measured music through the real daemon and the tiny model: every output's sidecar carries its
analysis and how far it is from what the job asked; the page shows tempo and key by the player."""

from __future__ import annotations

import json
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
    tempo = "tempo n/a" if shown["tempo_bpm"] is None else f"{shown['tempo_bpm']:.1f} BPM"
    assert f'<span class="tempo">{tempo}</span>' in page
    assert f'<span class="key">{shown["key"] or "key n/a"}</span>' in page
    json.dumps(body)  # plain JSON all through
