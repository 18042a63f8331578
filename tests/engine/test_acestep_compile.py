"""The ACE-Step DiT under torch.compile: decided once at load (`compile`: auto is on with CUDA,
off on the CPU), compiled during the warm-up, the same song within float32 rounding of the eager
DiT, one compile for every song length, and a compile that fails leaves the DiT eager with the
reason in the decode setup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from daemon.core.config import Settings
from daemon.core.messages import GenerationRequest, setup_summary
from daemon.engine.acestep.compiled import compile_mode
from daemon.engine.acestep.song import render
from daemon.engine.model import MusicEngine

LYRICS = "[verse]\nSoft notes in the morning light"
# The compiled DiT fuses and reorders float32 arithmetic: a song (peak 0.89) stays within this of
# the eager one (about 1e-6 measured on the tiny model).
TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    """Each test compiles from nothing: dynamo keeps the code it compiled for the DiT's forward
    and serves another model of the same shapes from it (its weights are inputs, not guards), so
    after another test's compile a deliberately broken compiler would never be called."""
    torch._dynamo.reset()


def _settings(tmp_path: Path, directory: Path, **overrides: Any) -> Settings:
    """The tiny ACE-Step model as `song`, on the CPU in float32; keyword overrides win."""
    values: dict[str, Any] = {
        "spool": tmp_path / "spool",
        "models": {"song": {"path": str(directory)}},
        "default_model": "song",
        "device": "cpu",
        "dtype": "float32",
        **overrides,
    }
    return Settings(**values)


def _engine(tmp_path: Path, directory: Path, **overrides: Any) -> MusicEngine:
    return MusicEngine(_settings(tmp_path, directory, **overrides))


def _song(engine: MusicEngine, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """(the engine's audio, the same rows rendered by the eager DiT) of one song."""
    request = GenerationRequest("lofi piano", duration, seed=3, lyrics=LYRICS)
    (result,) = engine.generate(request)
    model: Any = engine.loaded
    eager = [
        row for b in model.plan([request], [3]) for row in render(model.loaded.pipe, b, fixed_rows=model.rows)
    ]
    return result.audio, np.stack(eager)


def test_compile_is_decided_by_the_device_when_auto(tmp_path: Path, tiny_acestep_dir: Path) -> None:
    settings = _settings(tmp_path, tiny_acestep_dir)
    assert settings.compile == "auto"
    assert compile_mode(settings, torch.device("cpu")) == "off"
    assert compile_mode(settings, torch.device("cuda", 0)) == "on"
    engine = _engine(tmp_path, tiny_acestep_dir, warmup=False)
    info = engine.load_model()
    assert info.setup is not None and info.setup.compile == "off"
    assert info.sidecar_fields()["setup"]["compile"] == "off"


def test_a_failing_compile_leaves_the_dit_eager_with_the_reason(
    tmp_path: Path, tiny_acestep_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch._inductor.compile_fx as inductor

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no C compiler found")

    monkeypatch.setattr(inductor, "compile_fx", broken)
    engine = _engine(tmp_path, tiny_acestep_dir, compile="on")
    info = engine.load_model()  # the warm-up compiles, fails, and goes on eager
    setup = info.sidecar_fields()["setup"]
    assert setup["compile"] == "failed" and "no C compiler found" in setup["compile_error"], setup
    assert "compile failed: " in setup_summary(setup)
    ours, eager = _song(engine, 1.0)
    np.testing.assert_array_equal(ours, eager)
    assert engine.info is not None and engine.info.setup.compile == "failed"  # type: ignore[union-attr]


@pytest.mark.slow  # inductor compiles the tiny DiT for the CPU
def test_the_compiled_dit_sings_the_eager_song_and_compiles_once(
    tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    from torch._dynamo.utils import counters

    engine = _engine(tmp_path, tiny_acestep_dir, compile="on")
    info = engine.load_model()
    assert info.setup is not None and info.setup.compile == "on", info.setup
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1  # compiled at the warm-up, before any job
    for duration in (1.5, 2.3):  # an even and an odd number of latent frames
        ours, eager = _song(engine, duration)
        assert ours.shape == eager.shape == (1, 2, round(duration * 48000))
        np.testing.assert_allclose(ours, eager, rtol=0, atol=TOLERANCE)
        assert not np.array_equal(ours, np.zeros_like(ours))
    assert counters["stats"]["unique_graphs"] == graphs  # no song length compiled again


def test_doctor_warns_when_a_serving_daemon_runs_the_dit_eager_after_a_failed_compile(
    tmp_path: Path, tiny_acestep_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.ops.client as client
    from daemon.ops.doctor.spool_checks import check_decode_setup

    setup = {
        "family": "ace-step",
        "decoder": "diffusers",
        "compile": "failed",
        "compile_error": "no compiler",
    }
    serving = [{"host": "box", "pid": 7, "model": {"name": "song", "setup": setup}}]
    monkeypatch.setattr(client, "serving_daemons", lambda settings: serving)
    settings = _settings(tmp_path, tiny_acestep_dir)
    check = check_decode_setup(settings)
    assert check.status == "warn" and "compile failed: no compiler" in check.detail
    assert check.fix is not None and "compile: off" in check.fix
    serving[0]["model"]["setup"] = {**setup, "compile": "on", "compile_error": None}
    assert check_decode_setup(settings).status == "ok"
