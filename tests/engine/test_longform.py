"""Long form on the tiny model with a 1 s window and 0.6 s stride (0.4 s of context per continuation)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from daemon.core.config import Settings
from daemon.core.messages import GenerationRequest, Progress
from daemon.engine.decoding.api import DecodeRequest, RowSampling
from daemon.engine.decoding.codec import codes_to_audio
from daemon.engine.decoding.hf import TransformersBackend
from daemon.engine.longform import WindowPlan, decode_long, plan_segments, planned_steps
from daemon.engine.model import MusicEngine
from daemon.engine.plan import row_sampling

SR = 32000
HOP = 800  # samples per frame of the tiny codec (40 frames/s)


@pytest.fixture
def long_engine(make_settings: Callable[..., Settings], decoder: str) -> MusicEngine:
    return MusicEngine(make_settings(decoder=decoder, window_s=1.0, extend_stride_s=0.6))


def test_plan_windows() -> None:
    assert plan_segments([30], 40, 24) == [WindowPlan(0, 30)]
    assert plan_segments([40], 40, 24) == [WindowPlan(0, 40)]
    assert plan_segments([100], 40, 24) == [
        WindowPlan(0, 40),
        WindowPlan(16, 24),
        WindowPlan(16, 24),
        WindowPlan(16, 12),
    ]
    # MusicGen defaults: 30 s window, 18 s stride at 50 Hz -> 12 s of context
    plans = plan_segments([60 * 50], 1500, 900)
    assert plans[0] == WindowPlan(0, 1500) and all(p.context == 600 for p in plans[1:])
    assert sum(p.new for p in plans) == 3000
    for bad in ((100, 40, 40), (100, 40, 0)):
        with pytest.raises(ValueError):
            plan_segments([bad[0]], *bad[1:])


@pytest.mark.parametrize("duration", [1.0, 1.3, 2.0, 2.55])
def test_exact_length_past_the_window(long_engine: MusicEngine, duration: float) -> None:
    seen: list[Progress] = []
    (res,) = long_engine.generate(
        [GenerationRequest("ambient drone", duration, seed=4)], progress=seen.append
    )
    assert res.audio.shape == (1, 1, round(duration * SR))
    assert np.all(np.isfinite(res.audio))
    frames = long_engine.loaded.framing.frames_for(duration)  # type: ignore[union-attr]
    model = long_engine.loaded.ckpt.model  # type: ignore[union-attr]
    assert (
        seen[-1].frames_done == seen[-1].frames_total == planned_steps(model, plan_segments([frames], 40, 24))
    )


def test_windows_continue_the_generated_tokens(long_engine: MusicEngine) -> None:
    """Greedy: window 1 is the plain 40-frame decode; window 2 is the continuation of its last 16 frames."""
    long_engine.load_model()
    ckpt = long_engine.loaded.ckpt
    assert ckpt is not None
    enc = ckpt.processor(text=["slow piano ballad"], return_tensors="pt")
    backend = TransformersBackend()
    req = DecodeRequest(enc["input_ids"], enc["attention_mask"], [RowSampling(greedy=True)], 3.0, 64)
    with torch.inference_mode():
        codes = decode_long(backend, ckpt.model, req, window_frames=40, stride_frames=24)
        first = backend.decode(
            ckpt.model,
            DecodeRequest(enc["input_ids"], enc["attention_mask"], [RowSampling(greedy=True)], 3.0, 40),
        )
        cont = backend.decode(
            ckpt.model,
            DecodeRequest(
                enc["input_ids"],
                enc["attention_mask"],
                [RowSampling(greedy=True)],
                3.0,
                24,
                prompt_codes=first[..., 24:],
            ),
        )
        fresh = backend.decode(
            ckpt.model,
            DecodeRequest(enc["input_ids"], enc["attention_mask"], [RowSampling(greedy=True)], 3.0, 24),
        )
    assert codes.shape == (1, 4, 64)
    assert torch.equal(codes[..., :40], first)
    assert torch.equal(codes[..., 40:], cont)
    assert not torch.equal(cont, fresh)  # the context really conditions the continuation


def test_no_clicks_at_the_seams(long_engine: MusicEngine) -> None:
    """The whole code sequence is decoded at once: the seams look like any other sample."""
    duration = 2.55
    (res,) = long_engine.generate([GenerationRequest("ambient drone", duration, seed=9)])
    x = res.audio[0, 0].astype(np.float64)
    d = np.abs(np.diff(x))
    seams = [f * HOP for f in (40, 64, 88)]  # where windows 2, 3, 4 start
    typical = np.percentile(d, 99.5)
    for s in seams:
        assert d[s - 2 : s + 2].max() <= typical, f"jump at seam {s}"


def test_long_form_audio_is_one_pass_over_all_codes(long_engine: MusicEngine) -> None:
    """The waveform is the codec run once over the concatenated windows' codes: no per-window seams
    exist to smooth over (a random tiny codec sounds like noise, so clicks alone would not show)."""
    req = GenerationRequest("ambient drone", 1.6, seed=5)
    (res,) = long_engine.generate([req])
    ckpt = long_engine.loaded.ckpt
    assert ckpt is not None
    enc = ckpt.processor(text=[req.prompt], return_tensors="pt")
    with torch.inference_mode():
        codes = decode_long(
            long_engine.loaded.backend,  # type: ignore[union-attr]  # the engine's own loop: the same samples
            ckpt.model,
            DecodeRequest(enc["input_ids"], enc["attention_mask"], [row_sampling(req, 5)], 3.0, 64),
            window_frames=40,
            stride_frames=24,
        )
        audio = codes_to_audio(ckpt.model, codes)[0].numpy()
    assert audio.shape[-1] == 64 * HOP
    assert np.array_equal(res.audio[0], audio[:, : round(1.6 * SR)])


def test_long_form_is_deterministic(long_engine: MusicEngine) -> None:
    (a,) = long_engine.generate([GenerationRequest("ambient drone", 1.6, seed=11, count=2)])
    (b,) = long_engine.generate([GenerationRequest("ambient drone", 1.6, seed=11, count=2)])
    assert np.array_equal(a.audio, b.audio)
