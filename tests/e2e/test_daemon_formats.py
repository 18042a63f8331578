"""mp3, ogg (vorbis, opus) and flac results through the real daemon, judged by ffprobe: the
container, the length and the title tag (the prompt), and loudness measured on the file."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from daemon_harness import DaemonProcess, SpoolView, write_config

TIMEOUT_S = 90.0
pytestmark = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffprobe")


def probe(path: Path) -> dict:
    cmd = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def tags_of(meta: dict) -> dict[str, str]:
    tags = {k.lower(): v for k, v in meta["format"].get("tags", {}).items()}
    for stream in meta["streams"]:
        tags.update({k.lower(): v for k, v in stream.get("tags", {}).items()})
    return tags


def test_mp3_ogg_and_flac_results_are_what_ffprobe_says(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path / "config.yaml", tmp_path / "spool", tiny_model_dir, max_batch=8)
    sp = SpoolView(tmp_path / "spool")
    batch = {
        "defaults": {"duration": 1.0, "seed": 5},
        "jobs": [
            {
                "id": "prev-mp3",
                "prompt": "an mp3 preview of a tune",
                "output": {"format": "mp3", "quality": 0.4},
            },
            {"id": "prev-vorbis", "prompt": "a vorbis preview of a tune", "output": {"format": "ogg"}},
            {
                "id": "prev-opus",
                "prompt": "an opus preview of a tune",
                "output": {"format": "ogg", "codec": "opus"},
            },
            {
                "id": "master",
                "prompt": "a flac master of a tune",
                "output": {"format": "flac", "subtype": "PCM_24"},
            },
        ],
    }
    expect = {
        "prev-mp3": ("mp3", "mp3", "MPEG_LAYER_III", 32000),
        "prev-vorbis": ("ogg", "vorbis", "VORBIS", 32000),
        "prev-opus": ("ogg", "opus", "OPUS", 48000),
        "master": ("flac", "flac", "PCM_24", 32000),
    }
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        sp.drop("previews.yaml", yaml.safe_dump(batch, sort_keys=False))
        bodies = {job_id: sp.wait_outcome(job_id, TIMEOUT_S, alive=daemon) for job_id in expect}
        assert daemon.stop() == 0
    for job_id, (ffformat, codec, subtype, rate) in expect.items():
        body = bodies[job_id]
        assert body["status"] == "completed", body
        out = body["outputs"][0]
        path = sp.root / "outbox" / out["path"]
        assert path.suffix == "." + body["request"]["output"]["format"]
        meta = probe(path)
        assert meta["format"]["format_name"] == ffformat
        assert meta["streams"][0]["codec_name"] == codec
        assert float(meta["format"]["duration"]) == pytest.approx(1.0, abs=0.07)
        tags = tags_of(meta)
        assert tags["title"] == body["request"]["prompt"]
        assert job_id in tags["comment"] and "seed 5" in tags["comment"] and "tiny" in tags["comment"]
        assert (out["subtype"], out["sample_rate"]) == (subtype, rate)
        assert out["duration_s"] == pytest.approx(1.0, abs=0.001)
        assert out["tags"]["title"] == body["request"]["prompt"]
        # Measured on the decoded file, near the -16 LUFS target even through a lossy codec.
        assert out["integrated_lufs"] == pytest.approx(-16.0, abs=1.5)
        # The limiter holds -1 dBTP before encoding; a lossy codec may overshoot it a little.
        assert out["true_peak_dbtp"] <= (-0.9 if ffformat == "flac" else 0.0)
    assert bodies["prev-mp3"]["outputs"][0]["quality"] == 0.4
    assert bodies["master"]["outputs"][0]["quality"] is None
