"""MusicEngine on the tiny model (CPU): seeds, lengths, progress, cancel, timeout, OOM split, stats."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from daemon.core.config import Settings
from daemon.core.errors import (
    GenerationCancelled,
    GenerationTimeoutError,
    OutOfMemoryError,
    UnknownModelError,
)
from daemon.core.messages import GenerationRequest, Progress
from daemon.engine.decoding.api import DecodeRequest
from daemon.engine.decoding.hf import TransformersBackend
from daemon.engine.decoding.testseam import decode_with
from daemon.engine.model import MusicEngine
from daemon.service.faults import Faults, with_faults, without_faults

SR = 32000
FPS = 40  # the tiny codec's frame rate


@pytest.fixture
def engine(make_settings: Callable[..., Settings], decoder: str) -> MusicEngine:
    return MusicEngine(make_settings(decoder=decoder))


def _gen(engine: MusicEngine, **kw: object) -> np.ndarray:
    values: dict = {"prompt": "warm dusty piano", "duration": 0.5, "seed": 42, **kw}
    (res,) = engine.generate([GenerationRequest(**values)])
    return res.audio


def test_load_reports_the_model(engine: MusicEngine, tiny_model_dir: Path, decoder: str) -> None:
    info = engine.load_model()
    assert info.name == "tiny" and info.source == str(tiny_model_dir)
    assert info.revision.startswith("local:")
    assert (info.device, info.dtype, info.backend) == ("cpu", "float32", decoder)
    assert info.sample_rate == SR and info.channels == 1
    assert info.frame_rate == FPS  # from the codec config, not a hard-coded 50
    assert info.parameters == sum(p.numel() for p in engine.loaded.ckpt.model.parameters())  # type: ignore[union-attr]
    assert engine.is_loaded("tiny") and not engine.is_loaded("other")
    assert engine.load_model("tiny") == info and engine.get_stats().loads == 1  # already resident
    framing = engine.loaded.framing  # type: ignore[union-attr]
    assert framing.frames_for(1.0) == 40 and framing.frames_for(1.01) == 41


def test_same_seed_same_audio_and_global_rng_does_not_matter(engine: MusicEngine) -> None:
    torch.manual_seed(0)
    a = _gen(engine)
    torch.manual_seed(999)
    torch.rand(1000)
    np.random.seed(3)
    b = _gen(engine)
    assert a.dtype == np.float32
    assert np.array_equal(a, b)
    state = torch.random.get_rng_state()
    c = _gen(engine, seed=43)
    assert not np.array_equal(a, c)
    assert torch.equal(state, torch.random.get_rng_state())  # generation leaves the global RNG alone


def test_effective_seed_is_drawn_and_reproduces(engine: MusicEngine) -> None:
    (r1,) = engine.generate([GenerationRequest("warm piano", 0.5)])
    (r2,) = engine.generate([GenerationRequest("warm piano", 0.5)])
    assert 0 <= r1.seed < 2**63 and r1.seed != r2.seed
    (again,) = engine.generate([GenerationRequest("warm piano", 0.5, seed=r1.seed)])
    assert np.array_equal(r1.audio, again.audio)


def test_variations_differ_and_reproduce(engine: MusicEngine) -> None:
    a = _gen(engine, count=3)
    assert a.shape == (3, 1, SR // 2)
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2])
    assert np.array_equal(a, _gen(engine, count=3))


def test_greedy_ignores_the_seed(engine: MusicEngine) -> None:
    assert np.array_equal(_gen(engine, greedy=True, seed=1), _gen(engine, greedy=True, seed=2))


@pytest.mark.parametrize("duration", [0.3, 1.0, 1.37, 2.0])
def test_exact_sample_count(engine: MusicEngine, duration: float) -> None:
    audio = _gen(engine, duration=duration)
    assert audio.shape == (1, 1, round(duration * SR))
    assert np.all(np.isfinite(audio)) and np.abs(audio).max() > 0


def test_several_requests_in_one_call(engine: MusicEngine) -> None:
    reqs = [
        GenerationRequest("epic drums", 0.5, seed=1),
        GenerationRequest("soft synth pad", 0.75, seed=2, count=2, temperature=0.7, top_p=0.9),
        GenerationRequest("jazz piano", 0.5, seed=3, cfg_coef=1.0, top_k=10),
    ]
    results = engine.generate(reqs)
    assert [r.audio.shape for r in results] == [(1, 1, 16000), (2, 1, 24000), (1, 1, 16000)]
    assert [r.seed for r in results] == [1, 2, 3]
    # each request's audio is what it gets alone: batching never mixes jobs with this backend
    for req, res in zip(reqs, results):
        (alone,) = engine.generate([req])
        assert np.array_equal(alone.audio, res.audio)


def test_progress_is_monotonic_and_complete(engine: MusicEngine) -> None:
    seen: list[Progress] = []
    engine.generate([GenerationRequest("house beat", 0.5, seed=1)], progress=seen.append)
    assert len(seen) == 20 + 3  # one per decoding step: frames + the delay pattern
    done = [p.frames_done for p in seen]
    assert done == sorted(done) and done[-1] == seen[-1].frames_total
    assert seen[-1].fraction == 1.0 and seen[0].fraction > 0
    assert all(b.elapsed_s >= a.elapsed_s for a, b in zip(seen, seen[1:]))


def test_cancel_mid_generation_from_another_thread(
    make_settings: Callable[..., Settings], decoder: str
) -> None:
    # The stall holds the decode loop at step 4 so the canceller thread surely acts mid-way. It
    # lasts an hour: only the cancel can end it (a stall that ignored it would hit the test timeout).
    engine = with_faults(
        MusicEngine(make_settings(decoder=decoder)), Faults(**{"stall_after_steps": 4, "stall_s": 3600})
    )
    cancel = threading.Event()
    started = threading.Event()
    steps: list[int] = []

    def progress(p: Progress) -> None:
        steps.append(p.frames_done)
        if len(steps) == 3:
            started.set()

    canceller = threading.Thread(target=lambda: (started.wait(10), cancel.set()))
    canceller.start()
    with pytest.raises(GenerationCancelled) as ei:
        engine.generate([GenerationRequest("ambient pad", 2.0, seed=1)], progress=progress, cancel=cancel)
    canceller.join()
    assert ei.value.error_type == "cancelled"
    assert 3 <= len(steps) < 80
    # the engine survives and still works
    cancel.clear()
    engine = without_faults(engine)
    assert _gen(engine).shape == (1, 1, 16000)
    assert engine.get_stats().failed_jobs == 1


def test_timeout_mid_generation(make_settings: Callable[..., Settings], decoder: str) -> None:
    engine = with_faults(
        MusicEngine(make_settings(decoder=decoder)), Faults(**{"stall_after_steps": 3, "stall_s": 3})
    )
    engine.load_model()  # the time limit covers generation, not loading
    steps: list[int] = []
    # The deadline is checked between steps: the 3 s stall at step 3 passes the 1.5 s limit, so the
    # stalled step never reports, whatever this machine's speed (a slow one stops even earlier).
    with pytest.raises(GenerationTimeoutError) as ei:
        engine.generate(
            [GenerationRequest("ambient pad", 1.0, seed=1)],
            timeout_s=1.5,
            progress=lambda p: steps.append(p.frames_done),
        )
    assert ei.value.error_type == "timeout" and "job_timeout_s" in (ei.value.hint or "")
    assert steps == list(range(1, len(steps) + 1)) and len(steps) <= 2  # step 3 stalled past the deadline
    assert engine.is_loaded()


def test_progress_callback_exceptions_pass_through_unchanged(engine: MusicEngine) -> None:
    class Stop(Exception):
        pass

    def progress(p: Progress) -> None:
        if p.frames_done >= 5:
            raise Stop()

    with pytest.raises(Stop):
        engine.generate([GenerationRequest("ambient pad", 1.0, seed=1)], progress=progress)


def test_injected_oom_splits_the_batch(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture, decoder: str
) -> None:
    engine = with_faults(MusicEngine(make_settings(decoder=decoder)), Faults(**{"oom_once": True}))
    with caplog.at_level(logging.WARNING, logger="daemon.engine.run"):
        (res,) = engine.generate([GenerationRequest("techno loop", 0.5, seed=7, count=4)])
    assert res.audio.shape == (4, 1, 16000)
    assert "retrying as 2 + 2" in caplog.text
    assert not np.array_equal(res.audio[0], res.audio[2])


class _OomBackend(TransformersBackend):
    """CUDA cannot exist here: raise its out-of-memory error for batches above `limit` rows."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.batches: list[int] = []

    def decode(self, model: object, req: DecodeRequest) -> torch.Tensor:
        self.batches.append(len(req.rows))
        if len(req.rows) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().decode(model, req)


def test_oom_retry_once_then_typed_error(make_settings: Callable[..., Settings]) -> None:
    backend = _OomBackend(limit=0)
    engine = MusicEngine(make_settings())
    decode_with(engine, backend)
    with pytest.raises(OutOfMemoryError) as ei:
        engine.generate([GenerationRequest("techno loop", 0.5, seed=7, count=4)])
    assert ei.value.error_type == "out_of_memory"
    assert backend.batches == [4, 2]  # the full batch, then the first half; no third attempt
    backend.limit = 2
    backend.batches.clear()
    (res,) = engine.generate([GenerationRequest("techno loop", 0.5, seed=7, count=4)])  # the process lives on
    assert res.audio.shape == (4, 1, 16000) and backend.batches == [4, 2, 2]


def test_max_batch_splits_rows(make_settings: Callable[..., Settings]) -> None:
    backend = _OomBackend(limit=99)
    engine = MusicEngine(make_settings(max_batch=2))
    decode_with(engine, backend)
    (res,) = engine.generate([GenerationRequest("techno loop", 0.25, seed=7, count=5)])
    assert res.audio.shape[0] == 5 and backend.batches == [2, 2, 1]


def test_stats(engine: MusicEngine, decoder: str) -> None:
    results = engine.generate(
        [GenerationRequest("lofi beat", 0.5, seed=1, count=2), GenerationRequest("rock", 0.25, seed=2)]
    )
    results += engine.generate([GenerationRequest("jazz", 0.25, seed=3)])
    st = engine.get_stats()
    assert (st.model, st.device, st.dtype, st.backend) == ("tiny", "cpu", "float32", decoder)
    assert st.parameters == engine.info.parameters  # type: ignore[union-attr]
    assert st.jobs == 3 and st.failed_jobs == 0 and st.loads == 1
    assert st.audio_seconds == pytest.approx(1.5)
    assert st.generate_seconds > 0 and st.mean_rtf == pytest.approx(st.generate_seconds / 1.5)
    # A CPU job's peak is how far the resident set rose, which is 0 when the job reuses pages an
    # earlier test freed (tests/ops/test_doctor.py checks the window against a known allocation);
    # the engine's figure is the largest of its jobs' own.
    assert st.peak_memory_bytes == max(r.peak_memory_bytes for r in results)
    assert st.as_dict()["jobs"] == 3 and st.loaded


def test_warmup_at_load_is_not_counted(make_settings: Callable[..., Settings], decoder: str) -> None:
    engine = MusicEngine(make_settings(decoder=decoder, warmup=True))
    info = engine.load_model()
    assert info.load_s > 0 and engine.get_stats().jobs == 0


def test_unload_and_idle_unload(make_settings: Callable[..., Settings], decoder: str) -> None:
    engine = MusicEngine(make_settings(decoder=decoder, idle_unload_s=60))
    engine.load_model()
    engine.unload_model()
    assert not engine.is_loaded() and engine.info is None
    _gen(engine)  # loads again on demand
    last = engine.get_stats().last_used_monotonic
    assert last is not None
    assert engine.maybe_idle_unload(last + 30) is False and engine.is_loaded()
    assert engine.maybe_idle_unload(last + 61) is True and not engine.is_loaded()
    st = engine.get_stats()
    assert st.loads == 2 and st.jobs == 1 and not st.loaded and st.model == "tiny"


def test_unknown_model_keeps_the_resident_one(engine: MusicEngine) -> None:
    engine.load_model()
    with pytest.raises(UnknownModelError):
        engine.generate([GenerationRequest("lofi beat", 0.5)], model="large")
    assert engine.is_loaded("tiny")


def test_stereo(make_settings: Callable[..., Settings], tiny_stereo_model_dir: Path, decoder: str) -> None:
    engine = MusicEngine(
        make_settings(
            models={"st": {"path": str(tiny_stereo_model_dir)}}, default_model="st", decoder=decoder
        )
    )
    (res,) = engine.generate([GenerationRequest("wide stereo pad", 0.5, seed=3, count=2)])
    assert engine.info is not None and engine.info.channels == 2
    assert res.audio.shape == (2, 2, 16000)
    assert not np.array_equal(res.audio[0, 0], res.audio[0, 1])  # left and right are distinct


def test_generation_params(engine: MusicEngine) -> None:
    engine.set_generation_params(duration=0.5, temperature=0.8, top_k=50)
    req = engine.request("dreamy synthwave", seed=5)
    assert (req.duration, req.temperature, req.top_k, req.cfg_coef) == (0.5, 0.8, 50, 3.0)
    with pytest.raises(ValueError, match="unknown generation parameter"):
        engine.set_generation_params(bogus=1)
    (res,) = engine.generate([req])
    assert res.audio.shape == (1, 1, 16000) and res.seed == 5


def test_request_validation() -> None:
    with pytest.raises(ValueError):
        GenerationRequest("x", 0)
    with pytest.raises(ValueError):
        GenerationRequest("lofi", 1.0, count=0)
    with pytest.raises(ValueError):
        GenerationRequest("lofi", 1.0, seed=2**63)


@pytest.mark.gpu
def test_cuda_generate_and_unload_frees_memory(make_settings: Callable[..., Settings]) -> None:
    engine = MusicEngine(make_settings(device="cuda", decoder="transformers"))
    info = engine.load_model()
    assert info.device.startswith("cuda") and info.dtype in ("bfloat16", "float16")
    (res,) = engine.generate([GenerationRequest("lofi beat", 1.0, seed=1)])
    assert res.audio.shape == (1, 1, SR) and np.all(np.isfinite(res.audio))
    (again,) = engine.generate([GenerationRequest("lofi beat", 1.0, seed=1)])
    assert np.array_equal(res.audio, again.audio)
    assert res.peak_memory_bytes > 0
    engine.unload_model()
    assert torch.cuda.memory_allocated() < 1 << 20


@pytest.mark.parametrize("stereo", [False, True])
def test_greedy_audio_matches_transformers_generate(
    make_settings: Callable[..., Settings], tiny_model_dir: Path, tiny_stereo_model_dir: Path, stereo: bool
) -> None:
    """End to end against the reference: codes captured from generate and decoded by us (stereo
    codebooks de-interleaved) give the audio transformers itself produces."""
    d = tiny_stereo_model_dir if stereo else tiny_model_dir
    engine = MusicEngine(
        make_settings(models={"m": {"path": str(d)}}, default_model="m", decoder="transformers")
    )
    (res,) = engine.generate([GenerationRequest("deep house groove", 0.5, greedy=True, cfg_coef=3.0)])
    ckpt = engine.loaded.ckpt
    assert ckpt is not None
    enc = ckpt.processor(text=["deep house groove"], return_tensors="pt")
    with torch.inference_mode():
        ref = ckpt.model.generate(**enc, do_sample=False, guidance_scale=3.0, max_new_tokens=20 + 3)
    assert ref.shape == (1, 2 if stereo else 1, 20 * 800)
    np.testing.assert_allclose(res.audio[0], ref[0].numpy(), atol=1e-6)
