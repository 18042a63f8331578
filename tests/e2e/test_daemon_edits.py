"""Editing songs (ACE-Step 1.5, the tiny pipeline) through the real daemon: a repaint of an
earlier result keeps the audio outside its range equal to the source's VAE round trip (measured
against diffusers' own VAE on the source file) and changes what is inside; an extract writes one
file per asked track, all listed in one sidecar; every edit names its source with its sha256 in
`references`; a job with a tiny LoRA adapter differs from the same job without it and equals
diffusers' own pipeline with that adapter loaded; what a model cannot do is refused with a hint
naming what can."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from daemon_harness import DaemonProcess, SpoolView, job_yaml, wait_until, write_config

pytestmark = pytest.mark.slow  # one daemon, a handful of tiny songs

# The level is left alone and stored as float, so the file is the engine's audio.
RAW = {"format": "wav", "subtype": "FLOAT", "loudness_lufs": None, "true_peak_dbtp": None}
START, END = 1.0, 2.0
# The tiny VAE decoder's reach around the range's edges (its receptive field is under 0.3 s).
MARGIN_S = 0.35
# Outside the range the file equals the round trip to within this fraction of its peak.
KEPT_TOLERANCE = 1e-4


BASE_PROMPT = "a bright pop song with a steady beat"


def _song(prompt: str, **fields: Any) -> str:
    return job_yaml(prompt, **{"duration": 3.0, "steps": 3, "output": RAW, **fields})


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_acestep_dir: Path
) -> dict[str, Any]:
    from daemon.ops.tinyacestep import init_tiny_adapter

    root = tmp_path_factory.mktemp("edits")
    adapter = init_tiny_adapter(root / "adapter")
    config = write_config(
        root / "config.yaml",
        root / "spool",
        tiny_model_dir,
        models={
            "tiny": {"path": str(tiny_model_dir)},
            "song": {
                "path": str(tiny_acestep_dir),
                "adapters": {"warm": {"path": str(adapter), "scale": 0.8}},
            },
            "plain-song": {"path": str(tiny_acestep_dir)},
        },
        default_model="song",
        dtype="float32",
        max_batch=2,
    )
    sp = SpoolView(root / "spool")
    with DaemonProcess(config, root / "daemon.log") as daemon:
        daemon.start()
        sp.drop("base.yaml", _song(BASE_PROMPT, seed=5))
        sp.wait_outcome("base", 180, alive=daemon)
        src = {"source": "outbox/base.wav"}
        jobs = {
            "repainted": _song(
                "a quiet piano interlude", seed=9, repaint={**src, "start": START, "end": END}
            ),
            "stems": _song("split it", seed=3, extract={**src, "tracks": ["vocals", "drums"]}),
            "mg-extract": job_yaml("a tune", model="tiny", extract={**src, "tracks": ["drums"]}),
            "kazoo": _song("split it", extract={**src, "tracks": ["kazoo"]}),
            "past-end": _song("a tune", repaint={**src, "start": 5.0}),
            "lego": _song("a walking bass", seed=4, lego={**src, "track": "bass", "start": 0.5, "end": 2.5}),
            "completed": _song("a full band", seed=6, complete={**src, "tracks": ["drums", "bass"]}),
            "covered": _song("the same song as a jazz trio", seed=2, cover={**src, "strength": 0.7}),
            "missing": _song("a tune", repaint={"source": "outbox/nothing.wav", "start": 0.0}),
            "lora": _song(BASE_PROMPT, seed=5, adapter="warm"),
            "cold": _song("a tune", adapter="cold"),
            "mg-adapter": job_yaml("a tune", model="tiny", adapter="warm"),
            "plain-adapter": _song("a tune", model="plain-song", adapter="warm"),
        }
        for job_id, text in jobs.items():
            sp.drop(f"{job_id}.yaml", text)
        for job_id in jobs:
            sp.wait_outcome(job_id, 240, alive=daemon)
        page = sp.outbox / "index.html"
        wait_until(
            lambda: (
                page.exists() and all(f"{j}.json" in page.read_text() for j in ("repainted", "stems", "lora"))
            ),
            30,
            what="the page",
            alive=daemon,
        )
        assert daemon.stop() == 0, daemon.log_tail()
        log = daemon.log()
    assert "Traceback" not in log, log
    return {"spool": sp, "dir": tiny_acestep_dir, "adapter": adapter}


def _round_trip(pipeline_dir: Path, audio: np.ndarray) -> np.ndarray:
    """The source through diffusers' own VAE: encode (the distribution's mean), decode."""
    from diffusers import AceStepPipeline

    pipe = AceStepPipeline.from_pretrained(str(pipeline_dir), torch_dtype=torch.float32)
    hop = round(pipe.sample_rate / pipe.latents_per_second)  # padded to whole latent frames
    padded = np.pad(audio.T, ((0, 0), (0, -audio.shape[0] % hop)))
    x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32)).unsqueeze(0)
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mode()
        y = pipe.vae.decode(z).sample[0].numpy()
    return y[:, : audio.shape[0]].T


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_repaint_keeps_the_rest_of_the_source_and_changes_the_range(run: dict[str, Any]) -> None:
    sp: SpoolView = run["spool"]
    body = sp.outcome("repainted")
    assert body is not None and body["status"] == "completed", body
    (ref,) = body["references"]
    source = sp.outbox / "base.wav"
    assert ref == {
        "role": "repaint",
        "path": "outbox/base.wav",
        "sha256": _sha256(source),
        "duration_s": 3.0,
        "sample_rate": 48000,
        "channels": 2,
        "used_s": None,
    }
    assert body["request"]["repaint"] == {"source": "outbox/base.wav", "start": START, "end": END}
    assert body["request"]["duration"] == 3.0
    src, rate = sf.read(source, always_2d=True, dtype="float32")
    out, out_rate = sf.read(sp.outbox / body["outputs"][0]["path"], always_2d=True, dtype="float32")
    assert rate == out_rate == 48000 and out.shape == src.shape
    kept = _round_trip(run["dir"], src)
    t = np.arange(len(out)) / rate
    outside = (t < START - MARGIN_S) | (t >= END + MARGIN_S)
    inside = (t >= START + MARGIN_S) & (t < END - MARGIN_S)
    peak = float(np.abs(kept).max())
    err_out = float(np.abs(out[outside] - kept[outside]).max()) / peak
    err_in = float(np.abs(out[inside] - kept[inside]).max()) / peak
    assert err_out < KEPT_TOLERANCE, err_out
    assert err_in > 0.05, err_in


def test_extract_writes_one_file_per_track_in_one_sidecar(run: dict[str, Any]) -> None:
    sp: SpoolView = run["spool"]
    body = sp.outcome("stems")
    assert body is not None and body["status"] == "completed", body
    outputs = body["outputs"]
    assert [(o["path"], o["track"]) for o in outputs] == [
        ("stems-vocals.wav", "vocals"),
        ("stems-drums.wav", "drums"),
    ]
    assert [o["seed"] for o in outputs] == [3, 4]
    stems = [sf.read(sp.outbox / o["path"], always_2d=True, dtype="float32")[0] for o in outputs]
    assert all(s.shape == (144000, 2) for s in stems)
    assert float(np.abs(stems[0] - stems[1]).max()) > 1e-3  # each track its own instruction
    (ref,) = body["references"]
    assert ref["role"] == "extract" and ref["sha256"] == _sha256(sp.outbox / "base.wav")


@pytest.mark.parametrize(
    ("job_id", "loc", "words"),
    [
        ("mg-extract", None, ["'tiny' is of the musicgen family", "'extract'", "models: plain-song, song"]),
        ("kazoo", "extract.tracks[0]", ["vocals", "drums"]),
        ("past-end", "repaint", ["outside the source", "3.000 s"]),
        ("missing", "repaint.source", ["does not exist in outbox/"]),
        ("cold", "adapter", ["lists no adapter 'cold'", "warm"]),
        ("mg-adapter", None, ["'tiny' is of the musicgen family", "'adapter'", "models: plain-song, song"]),
        ("plain-adapter", "adapter", ["lists no adapters at all", "models: plain-song: adapters:"]),
    ],
)
def test_what_a_model_cannot_do_is_refused_naming_what_can(
    run: dict[str, Any], job_id: str, loc: str | None, words: list[str]
) -> None:
    body = run["spool"].outcome(job_id)
    assert body is not None and body["status"] == "failed", body
    error = body["error"]
    assert error["type"] == "invalid_job", error
    text = f"{error['message']} {error.get('hint')}"
    for word in words:
        assert word in text, (word, error)
    if loc is not None:  # the field and its line, as the validator says them
        assert [d["loc"] for d in error["details"]] == [loc], error


def test_an_adapter_changes_the_song_as_diffusers_applies_it(run: dict[str, Any]) -> None:
    from diffusers import AceStepPipeline

    from daemon.engine.acestep.song import SHIFT, SongBatch, SongParams, SongRow, pipeline_kwargs
    from daemon.ops.tinyacestep import ADAPTER_FILE

    sp: SpoolView = run["spool"]
    body = sp.outcome("lora")
    assert body is not None and body["status"] == "completed", body
    weights = run["adapter"] / ADAPTER_FILE
    assert body["adapter"] == {
        "name": "warm",
        "source": str(run["adapter"]),
        "sha256": _sha256(weights),
        "revision": None,
        "scale": 0.8,
    }
    assert body["request"]["adapter"] == "warm"
    with_lora = sf.read(sp.outbox / body["outputs"][0]["path"], always_2d=True, dtype="float32")[0]
    without = sf.read(sp.outbox / "base.wav", always_2d=True, dtype="float32")[0]
    assert float(np.abs(with_lora - without).max()) > 1e-4
    pipe = AceStepPipeline.from_pretrained(str(run["dir"]), torch_dtype=torch.float32)
    pipe.load_lora_weights(str(run["adapter"]), weight_name=ADAPTER_FILE, adapter_name="warm")
    pipe.set_adapters(["warm"], [0.8])
    batch = SongBatch(
        SongParams(duration=3.0, steps=3, guidance=1.0, shift=SHIFT), [SongRow(0, 0, 5, BASE_PROMPT)]
    )
    audio = pipe(
        **pipeline_kwargs(batch), generator=[torch.Generator("cpu").manual_seed(5)], output_type="np"
    )
    expected = np.asarray(audio.audios[0])[:, : with_lora.shape[0]].T
    np.testing.assert_allclose(with_lora, expected, rtol=0, atol=1e-6)


def test_the_page_groups_stems_under_their_job_and_marks_the_repainted_range(run: dict[str, Any]) -> None:
    from test_daemon_outbox_page import DomSummary, run_chromium

    page = run["spool"].outbox / "index.html"
    dumped = run_chromium("--dump-dom", page.resolve().as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    articles = dumped.stdout.split("<article")[1:]
    (stems,) = [a for a in articles if "stems-vocals.wav" in a]
    assert "stems-drums.wav" in stems and "stem vocals" in stems and "stem drums" in stems
    assert "stems of outbox/base.wav: vocals, drums" in stems
    (repainted,) = [a for a in articles if "repainted.wav" in a]
    dom = DomSummary()
    dom.feed(repainted)
    (svg,) = dom.find("svg")
    (rect,) = [r for r in dom.find("rect") if r.get("class") == "repainted"]
    bins = float(str(svg["viewbox"]).split()[2])
    x, width = float(str(rect["x"])), float(str(rect["width"]))
    assert abs(x / bins - START / 3.0) < 0.01 and abs((x + width) / bins - END / 3.0) < 0.01
    assert "repaint of outbox/base.wav, 1.0–2.0 s repainted" in repainted
    assert not [
        a for a in articles if "base.wav" in a and 'class="repainted"' in a and "repainted.wav" not in a
    ]


def test_cover_completes_and_records_its_source(run: dict[str, Any]) -> None:
    sp: SpoolView = run["spool"]
    body = sp.outcome("covered")
    assert body is not None and body["status"] == "completed", body
    assert body["request"]["cover"] == {"source": "outbox/base.wav", "strength": 0.7}
    (ref,) = body["references"]
    assert (ref["role"], ref["path"], ref["sha256"]) == (
        "cover",
        "outbox/base.wav",
        _sha256(sp.outbox / "base.wav"),
    )
    out = sf.read(sp.outbox / body["outputs"][0]["path"], always_2d=True, dtype="float32")[0]
    src = sf.read(sp.outbox / "base.wav", always_2d=True, dtype="float32")[0]
    assert out.shape == src.shape and float(np.abs(out - src).max()) > 1e-3


@pytest.mark.parametrize(("job_id", "kind"), [("lego", "lego"), ("completed", "complete")])
def test_lego_and_complete_run_on_the_source(run: dict[str, Any], job_id: str, kind: str) -> None:
    sp: SpoolView = run["spool"]
    body = sp.outcome(job_id)
    assert body is not None and body["status"] == "completed", body
    (ref,) = body["references"]
    assert (ref["role"], ref["sha256"]) == (kind, _sha256(sp.outbox / "base.wav"))
    out = sf.read(sp.outbox / body["outputs"][0]["path"], always_2d=True, dtype="float32")[0]
    src = sf.read(sp.outbox / "base.wav", always_2d=True, dtype="float32")[0]
    assert out.shape == src.shape and float(np.abs(out - src).max()) > 1e-3
