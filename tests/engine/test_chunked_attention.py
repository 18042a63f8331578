"""The graph path's chunked self-attention and load-time bucket preparation, on CPU (graph-shaped steps).

`testseam.GRAPH_SHAPED` runs exactly what the CUDA graphs replay (the same static buffers, the same
per-chunk key slices and masks, the same host-side choice of chunk per step) with each step run
instead of replayed, so these tests cover the graph path's arithmetic where there is no GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from daemon.core.config import Settings
from daemon.core.messages import GenerationRequest
from daemon.engine.decoding.api import RowSampling
from daemon.engine.decoding.dgx import DgxBackend
from daemon.engine.decoding.graphs import BucketKey
from daemon.engine.decoding.parts import model_parts
from daemon.engine.decoding.step import fused_decoder
from daemon.engine.decoding.testseam import GRAPH_SHAPED, decode_with, run_steps
from daemon.engine.model import MusicEngine
from tests.engine.test_fastdecode import GREEDY, PROMPTS, _request, _text, hf_greedy_codes

# A prompt of the length real jobs have (17-32 T5 tokens: the prepared text bucket).
TAGS = "lo-fi hip hop loop, dusty piano chords, soft vinyl crackle, mellow boom bap drums, 80 bpm"


def _chunked(chunk: int = 16, **kw: Any) -> DgxBackend:
    return run_steps(DgxBackend(length_multiple=16, attention_chunk=chunk, **kw), GRAPH_SHAPED)


@pytest.mark.parametrize("cfg_coef", [1.0, 3.0])
def test_chunked_greedy_equals_eager_and_transformers(tiny: tuple[Any, Any], cfg_coef: float) -> None:
    model, processor = tiny
    enc = _text(processor, PROMPTS[:2])
    frames = 70  # 74 positions: capacity 80, five chunks of 16
    backend = _chunked()
    seen: list[int] = []  # key positions each step's self-attention gets (layer 0's cache slice)
    hook = (
        fused_decoder(model_parts(model))
        .layers[0]
        .register_forward_pre_hook(lambda _layer, args: seen.append(args[2].shape[3]))
    )
    try:
        got = backend.decode(model, _request(enc, [GREEDY, GREEDY], cfg_coef, frames))
    finally:
        hook.remove()
    # The prefill writes positions 0..0; each later step, fed at position p, reads its chunk's slice.
    assert seen[1:] == [(p // 16 + 1) * 16 for p in range(1, frames + 3)]
    (key,) = backend.buckets
    bucket = backend.bucket(key)
    assert bucket is not None and key.length == 80
    assert bucket.ends == [16, 32, 48, 64, 80]
    assert bucket.graphs == [] and bucket.replays == 0  # static: run, not replayed
    eager = DgxBackend().decode(model, _request(enc, [GREEDY, GREEDY], cfg_coef, frames))
    assert torch.equal(got, eager)
    assert torch.equal(got, hf_greedy_codes(model, enc, cfg_coef, frames))


@pytest.mark.parametrize("cfg_coef", [1.0, 3.0])
def test_chunked_sampling_equals_eager(tiny: tuple[Any, Any], cfg_coef: float) -> None:
    model, processor = tiny
    enc = _text(processor, PROMPTS)
    rows = [
        RowSampling(seed=21),
        RowSampling(seed=22, top_k=20, temperature=0.8),
        RowSampling(seed=23, top_p=0.9),
    ]
    eager = DgxBackend().decode(model, _request(enc, rows, cfg_coef, 50))
    # A chunk that does not divide the capacity: key slices end at 24, 48 and 64.
    backend = _chunked(chunk=24)
    got = backend.decode(model, _request(enc, rows, cfg_coef, 50))
    bucket = backend.bucket(backend.buckets[0])
    assert bucket is not None and bucket.ends == [24, 48, 64]
    assert torch.equal(got, eager)
    other = backend.decode(model, _request(enc, [RowSampling(seed=99), *rows[1:]], cfg_coef, 50))
    assert not torch.equal(other[0], got[0]) and torch.equal(other[1:], got[1:])


def test_chunked_prompt_continuation_prefills_across_chunks(tiny: tuple[Any, Any]) -> None:
    """A prompt longer than a chunk: the eager prefill fills several chunks before the first replay."""
    model, processor = tiny
    enc = _text(processor, PROMPTS[:2])
    prompt = torch.randint(0, 64, (2, 4, 37), generator=torch.Generator().manual_seed(3))
    expected = hf_greedy_codes(model, enc, 3.0, 20, prompt)
    got = _chunked().decode(model, _request(enc, [GREEDY, GREEDY], 3.0, 20, prompt))
    assert torch.equal(got, expected)


def test_prepare_builds_the_window_bucket_and_keeps_it(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    backend = run_steps(DgxBackend(max_buckets=2), GRAPH_SHAPED)
    keys = backend.prepare(model, rows=3, frames=200)
    # 200 frames + the 4-step delay pattern, rounded up to the length multiple; batch 3 padded to 4.
    expected = BucketKey(rows=4, doubled=True, length=256, text_length=32, sampling=True)
    assert keys == [expected] and backend.buckets == [expected]

    # Any job up to the prepared length uses that capacity; a greedy one the sampling bucket.
    tags = _text(processor, [TAGS] * 3)
    assert tags["input_ids"].shape[1] in range(17, 33)
    assert backend.bucket_key(model, _request(tags, [GREEDY] * 3, 3.0, 10)).length == 256
    greedy = backend.decode(model, _request(tags, [GREEDY] * 3, 3.0, 30))
    assert backend.buckets == [expected]
    eager = DgxBackend().decode(model, _request(tags, [GREEDY] * 3, 3.0, 30))
    assert torch.equal(greedy, eager)

    # Other shapes come and go in the remaining slot; the prepared bucket is never the one evicted.
    for prompts, cfg in ((PROMPTS[:1], 1.0), (PROMPTS[:2], 1.0), (PROMPTS[:1], 3.0)):
        backend.decode(model, _request(_text(processor, prompts), [GREEDY] * len(prompts), cfg, 5))
        assert expected in backend.buckets and len(backend.buckets) == 2
    backend.reset()
    assert backend.buckets == []
    assert backend.bucket_key(model, _request(tags, [GREEDY] * 3, 3.0, 10)).length == 128


def test_prepare_is_a_no_op_for_the_eager_loop(tiny: tuple[Any, Any]) -> None:
    model, _ = tiny
    backend = DgxBackend()  # auto on CPU: eager, nothing to capture
    assert backend.prepare(model, rows=8, frames=1200) == [] and backend.buckets == []


def test_warmup_prepares_the_bucket_jobs_use(make_settings: Callable[..., Settings]) -> None:
    backend = run_steps(DgxBackend(), GRAPH_SHAPED)
    settings = make_settings(decoder="dgx", warmup=True, max_batch=4, window_s=5.0, extend_stride_s=3.0)
    engine = MusicEngine(settings)
    decode_with(engine, backend)
    engine.load_model()
    # The long-form window (5 s at the tiny codec's 40 frames/s) for full batches, guided, sampling.
    prepared = BucketKey(rows=4, doubled=True, length=256, text_length=32, sampling=True)
    assert prepared in backend.buckets
    before = set(backend.buckets)
    (res,) = engine.generate([GenerationRequest(TAGS, 2.0, seed=5, count=4)])
    assert res.audio.shape[0] == 4
    assert set(backend.buckets) == before  # the job found its bucket ready
