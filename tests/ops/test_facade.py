"""The engine with tools: EngineWithTools keeps save_audio() and benchmark() on top of MusicEngine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import soundfile as sf

from daemon.core.config import Settings
from daemon.ops.facade import EngineWithTools, save_audio

SR = 32000


def test_seed_engine_generates_saves_and_benchmarks(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    engine = EngineWithTools(make_settings(decoder="transformers"))
    engine.set_generation_params(duration=0.5, temperature=0.8, top_k=50)
    (res,) = engine.generate([engine.request("dreamy synthwave", seed=5, count=2)])
    info = engine.save_audio(res, tmp_path / "out.wav")
    data, sr = sf.read(tmp_path / "out.wav")
    assert sr == SR and data.shape == (16000,) and info.frames == 16000
    # The function form writes the variation asked for, not the first one.
    save_audio(res, tmp_path / "v2.flac", variation=1, format="flac")
    second, _ = sf.read(tmp_path / "v2.flac")
    assert second.shape == (16000,) and not (abs(second - data) < 1e-4).all()
    report = engine.benchmark([0.5])
    assert [r.duration_s for r in report.rows] == [0.5] and report.rows[0].model == "tiny"
