"""Music from music through the real daemon, on the tiny models (plain, stereo, melody):
continuation from a library file and from an earlier result, a melody job, sections, a stereo
result, and the refusals of references that are missing, leave the spool or need another model."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from daemon_harness import DaemonProcess, SpoolView, write_config

TIMEOUT_S = 90.0
SR = 32000
FRAME_RATE = 40.0  # the tiny codec's frames per second


def riff(path: Path, seconds: float = 1.5, channels: int = 1) -> bytes:
    t = np.arange(int(SR * seconds)) / SR
    x = np.stack(
        [
            0.4 * np.sin(2 * np.pi * 220 * (c + 1) * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2
            for c in range(channels)
        ],
        1,
    ).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, SR)
    return path.read_bytes()


@pytest.fixture
def models(
    tmp_path: Path, tiny_model_dir: Path, tiny_stereo_model_dir: Path, tiny_melody_model_dir: Path
) -> Path:
    # A 1 s window with a 0.6 s stride: continuations keep at most 0.4 s of the reference, and a
    # 2 s piece needs several windows (and so several sections can each get their own).
    return write_config(
        tmp_path / "config.yaml",
        tmp_path / "spool",
        tiny_model_dir,
        models={
            "tiny": {"path": str(tiny_model_dir)},
            "stereo": {"path": str(tiny_stereo_model_dir)},
            "melodic": {"path": str(tiny_melody_model_dir)},
        },
        window_s=1.0,
        extend_stride_s=0.6,
        max_batch=8,
    )


def test_continuation_melody_sections_and_stereo(tmp_path: Path, models: Path) -> None:
    sp = SpoolView(tmp_path / "spool")
    with DaemonProcess(models, tmp_path / "daemon.log") as daemon:
        daemon.start()
        library = sp.root / "library"
        assert library.is_dir()
        data = riff(library / "riff.wav")
        mtime = (library / "riff.wav").stat().st_mtime_ns
        batch = {
            "defaults": {"seed": 3},
            "jobs": [
                {
                    "id": "cont",
                    "prompt": "keep the riff going",
                    "continue_from": "library/riff.wav",
                    "duration": 1.5,
                },
                {
                    "id": "tune",
                    "prompt": "follow the tune",
                    "melody": "library/riff.wav",
                    "duration": 1.0,
                    "model": "melodic",
                },
                {
                    "id": "parts",
                    "sections": [
                        {"prompt": "quiet intro part", "duration": 0.5},
                        {"prompt": "loud drums part", "duration": 1.0},
                        {"prompt": "outro part alone", "duration": 0.75},
                    ],
                },
                {
                    "id": "wide",
                    "prompt": "a wide stereo pad",
                    "duration": 1.0,
                    "model": "stereo",
                    "continue_from": "library/riff.wav",
                },
            ],
        }
        sp.drop("music.yaml", yaml.safe_dump(batch, sort_keys=False))
        bodies = {j: sp.wait_outcome(j, TIMEOUT_S, alive=daemon) for j in ("cont", "tune", "parts", "wide")}
        # An earlier result as the reference of a later job.
        sp.drop(
            "again.yaml",
            yaml.safe_dump(
                {"prompt": "and once more", "duration": 1.0, "seed": 4, "continue_from": "outbox/cont.wav"}
            ),
        )
        again = sp.wait_outcome("again", TIMEOUT_S, alive=daemon)
        assert daemon.stop() == 0
    for body in [*bodies.values(), again]:
        assert body["status"] == "completed", body.get("error")

    cont = bodies["cont"]
    out = cont["outputs"][0]
    assert out["duration_s"] == pytest.approx(1.5) and out["frames"] == int(1.5 * SR)
    [ref] = cont["references"]
    assert ref["role"] == "continue_from" and ref["path"] == "library/riff.wav"
    assert ref["sha256"] == hashlib.sha256(data).hexdigest()
    assert (ref["sample_rate"], ref["channels"], ref["duration_s"]) == (SR, 1, 1.5)
    assert ref["used_s"] == pytest.approx(0.4)  # window - stride
    assert cont["decoder"] in ("dgx", "transformers")
    # What reproduces it: on the CPU the dgx loop keeps a job's tokens free of its batch mates.
    repro = cont["reproducibility"]
    assert "seed" in repro["requires"] and "model.revision" in repro["requires"]
    assert repro["batch_mates"] == ("independent" if cont["decoder"] == "dgx" else "same_job_only")
    # The library file is read, never changed.
    assert (library / "riff.wav").read_bytes() == data and (library / "riff.wav").stat().st_mtime_ns == mtime

    [again_ref] = again["references"]
    cont_wav = sp.root / "outbox" / "cont.wav"
    assert again_ref["path"] == "outbox/cont.wav"
    assert again_ref["sha256"] == hashlib.sha256(cont_wav.read_bytes()).hexdigest() == out["sha256"]
    assert again["outputs"][0]["duration_s"] == pytest.approx(1.0)

    tune = bodies["tune"]
    assert tune["decoder"] == "transformers" and tune["references"][0]["role"] == "melody"
    assert tune["reproducibility"]["batch_mates"] == "same_job_only"
    assert tune["outputs"][0]["duration_s"] == pytest.approx(1.0)

    parts = bodies["parts"]
    assert parts["outputs"][0]["duration_s"] == pytest.approx(2.25)
    assert [s["prompt"] for s in parts["request"]["sections"]] == [
        "quiet intro part",
        "loud drums part",
        "outro part alone",
    ]
    assert parts["request"]["duration"] == 2.25

    wide = bodies["wide"]["outputs"][0]
    assert wide["channels"] == 2 and sf.info(str(sp.root / "outbox" / wide["path"])).channels == 2
    assert wide["integrated_lufs"] == pytest.approx(-16.0, abs=1.0)
    audio, _ = sf.read(str(sp.root / "outbox" / wide["path"]), always_2d=True)
    assert np.abs(audio[:, 0]).max() > 0 and np.abs(audio[:, 1]).max() > 0
    assert not np.allclose(audio[:, 0], audio[:, 1])  # two channels, not one copied
    assert bodies["wide"]["references"][0]["channels"] == 1  # a mono riff, up-mixed for the model


def test_references_that_are_refused(tmp_path: Path, models: Path) -> None:
    sp = SpoolView(tmp_path / "spool")
    outside = tmp_path / "outside.wav"
    riff(outside)
    with DaemonProcess(models, tmp_path / "daemon.log") as daemon:
        daemon.start()
        library = sp.root / "library"
        riff(library / "tune.wav", 1.0)
        (library / "escape.wav").symlink_to(outside)
        sp.drop(
            "refs.yaml",
            yaml.safe_dump(
                {
                    "defaults": {"duration": 0.5},
                    "jobs": [
                        {
                            "id": "missing",
                            "prompt": "a missing reference",
                            "continue_from": "library/nothing.wav",
                        },
                        {
                            "id": "escape",
                            "prompt": "a symlink out of the spool",
                            "continue_from": "library/escape.wav",
                        },
                        {
                            "id": "plain-melody",
                            "prompt": "melody on a plain model",
                            "melody": "library/tune.wav",
                        },
                    ],
                },
                sort_keys=False,
            ),
        )
        # Refused by the validator already: the whole file fails.
        sp.drop("traversal.yaml", "prompt: out of the spool\ncontinue_from: library/../../etc/passwd.wav\n")
        sp.drop("absolute.yaml", f"prompt: an absolute path\nmelody: {outside}\n")
        bodies = {
            j: sp.wait_outcome(j, TIMEOUT_S, alive=daemon)
            for j in ("missing", "escape", "plain-melody", "traversal", "absolute")
        }
        assert daemon.stop() == 0
    for job_id, body in bodies.items():
        assert body["status"] == "failed" and body["error"]["type"] == "invalid_job", (job_id, body)
        assert body["error"]["hint"], job_id
    by = {j: bodies[j]["error"]["details"][0] for j in bodies}
    assert (by["missing"]["loc"], by["missing"]["line"]) == ("jobs[0].continue_from", 6)
    assert "does not exist in library/" in by["missing"]["msg"]
    assert by["escape"]["loc"] == "jobs[1].continue_from" and "leads out of the spool" in by["escape"]["msg"]
    assert by["plain-melody"]["loc"] == "jobs[2].melody" and by["plain-melody"]["line"] == 12
    assert "cannot follow a melody" in by["plain-melody"]["msg"]
    assert "melodic" in bodies["plain-melody"]["error"]["hint"]  # names the melody model configured
    assert (by["traversal"]["loc"], by["traversal"]["line"]) == ("continue_from", 2)
    assert "'..'" in by["traversal"]["msg"]
    assert by["absolute"]["loc"] == "melody" and "absolute path" in by["absolute"]["msg"]
    # Nothing was written from the refused jobs, and the symlink's target is untouched.
    assert not [p for p in os.listdir(sp.root / "outbox") if p.endswith(".wav")]
    assert outside.exists()
