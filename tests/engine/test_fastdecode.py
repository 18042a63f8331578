"""The dgx decode loop against transformers `generate`, on real (tiny, random) MusicGen checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from daemon.engine.decoding.api import DecodeRequest, RowSampling
from daemon.engine.decoding.dgx import DgxBackend
from daemon.engine.decoding.launches import kernels_problem
from daemon.engine.decoding.sampler import RowNoise, guide, pick_tokens, sampling_tensors
from daemon.engine.decoding.testseam import GRAPH_SHAPED, decode_with, run_steps
from tests.engine.conftest import load_pretrained

PROMPTS = ["warm lofi hip hop beat with dusty piano", "dark techno", "calm ambient pad with soft strings"]


def _text(processor: Any, prompts: list[str]) -> Any:
    return processor(text=prompts, padding=True, return_tensors="pt")


def _channel_codebooks(model: Any) -> int:
    return model.config.decoder.num_codebooks // model.config.decoder.audio_channels


def hf_greedy_codes(
    model: Any, enc: Any, cfg_coef: float, frames: int, prompt: torch.Tensor | None = None
) -> torch.Tensor:
    """The codes `MusicgenForConditionalGeneration.generate` hands to its codec (greedy), new frames only."""
    captured: list[torch.Tensor] = []
    codec = model.audio_encoder
    original = codec.decode

    def take(codes: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        captured.append(codes)
        return original(codes, *args, **kwargs)

    kwargs: dict[str, Any] = {}
    prompt_len = 0
    if prompt is not None:
        prompt_len = prompt.shape[-1]
        kwargs["decoder_input_ids"] = prompt.reshape(-1, prompt_len)
    codec.decode = take
    try:
        model.generate(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            do_sample=False,
            guidance_scale=cfg_coef,
            max_new_tokens=frames + _channel_codebooks(model) - 1,
            **kwargs,
        )
    finally:
        del codec.decode
    if len(captured) == 2:  # stereo: the codec sees left and right codebooks separately
        left, right = captured[0][0], captured[1][0]
        codes = torch.stack([left, right], dim=2).reshape(left.shape[0], -1, left.shape[-1])
    else:
        codes = captured[0][0]
    return codes[..., prompt_len:]


def _request(
    enc: Any,
    rows: list[RowSampling],
    cfg_coef: float,
    frames: int,
    prompt: torch.Tensor | None = None,
    on_step: Any = None,
) -> DecodeRequest:
    return DecodeRequest(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        rows=rows,
        cfg_coef=cfg_coef,
        max_frames=frames,
        prompt_codes=prompt,
        on_step=on_step,
    )


GREEDY = RowSampling(greedy=True)


# ---------------------------------------------------------------- equivalence with transformers


@pytest.mark.parametrize("cfg_coef", [1.0, 3.0])
@pytest.mark.parametrize("frames", [3, 10, 37])
def test_greedy_matches_transformers_generate(tiny: tuple[Any, Any], cfg_coef: float, frames: int) -> None:
    model, processor = tiny
    enc = _text(processor, PROMPTS[:2])  # different lengths: the text mask has padding
    assert int(enc["attention_mask"].sum(dim=1).min()) < enc["attention_mask"].shape[1]
    expected = hf_greedy_codes(model, enc, cfg_coef, frames)
    got = DgxBackend().decode(model, _request(enc, [GREEDY, GREEDY], cfg_coef, frames))
    assert got.shape == (2, 4, frames)
    assert got.dtype == torch.long
    assert torch.equal(got, expected)


def test_guidance_changes_the_tokens(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    enc = _text(processor, PROMPTS[:1])
    plain = DgxBackend().decode(model, _request(enc, [GREEDY], 1.0, 30))
    guided = DgxBackend().decode(model, _request(enc, [GREEDY], 3.0, 30))
    assert not torch.equal(plain, guided)


def test_stereo_greedy_matches_transformers_generate(tiny_stereo: tuple[Any, Any]) -> None:
    model, processor = tiny_stereo
    enc = _text(processor, PROMPTS[:2])
    expected = hf_greedy_codes(model, enc, 3.0, 12)
    got = DgxBackend().decode(model, _request(enc, [GREEDY, GREEDY], 3.0, 12))
    assert got.shape == (2, 8, 12)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("prefill_tokens", [None, 8], ids=["whole-prefill", "prefill-in-pieces"])
def test_prompt_continuation_matches_transformers_and_is_deterministic(
    tiny: tuple[Any, Any], prefill_tokens: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prefix fed in pieces (as a long continuation's is, to bound its memory) gives the tokens
    transformers gives with the prefix fed at once."""
    if prefill_tokens is not None:  # 4 rows with guidance: 2 positions a piece, 5 pieces
        monkeypatch.setattr("daemon.engine.decoding.graphs.PREFILL_TOKENS", prefill_tokens)
    model, processor = tiny
    enc = _text(processor, PROMPTS[:2])
    prompt = torch.randint(
        0, model.config.decoder.vocab_size, (2, 4, 9), generator=torch.Generator().manual_seed(5)
    )
    expected = hf_greedy_codes(model, enc, 3.0, 15, prompt)
    backend = DgxBackend()
    got = backend.decode(model, _request(enc, [GREEDY, GREEDY], 3.0, 15, prompt))
    assert got.shape == (2, 4, 15)  # exactly the new frames, the prompt not included
    assert torch.equal(got, expected)

    sampled_rows = [RowSampling(seed=11), RowSampling(seed=12, temperature=0.8)]
    first = backend.decode(model, _request(enc, sampled_rows, 3.0, 15, prompt))
    second = backend.decode(model, _request(enc, sampled_rows, 3.0, 15, prompt))
    assert first.shape == (2, 4, 15)
    assert torch.equal(first, second)


def test_a_prefix_fed_in_pieces_fills_the_cache_as_a_whole_prefill_does(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every layer's keys and values of a 30-frame prefix, fed 4 positions at a time (2 rows with
    guidance), equal those of the prefix fed at once: the pieces' causal mask is exact."""
    model, processor = tiny
    enc = _text(processor, PROMPTS[:1])
    prompt = torch.randint(
        0, model.config.decoder.vocab_size, (1, 4, 30), generator=torch.Generator().manual_seed(9)
    )
    caches = []
    for tokens in (None, 8):
        if tokens is not None:
            monkeypatch.setattr("daemon.engine.decoding.graphs.PREFILL_TOKENS", tokens)
        backend = DgxBackend(batch_invariant="on")  # keeps its bucket, so its cache can be read
        backend.decode(model, _request(enc, [GREEDY], 3.0, 1, prompt))
        (bucket,) = [backend.bucket(key) for key in backend.buckets]
        caches.append(bucket.kv[..., :30, :].clone())
    assert caches[0].abs().max() > 0
    torch.testing.assert_close(caches[1], caches[0], rtol=1e-5, atol=1e-6)


def test_very_short_requests_return_exact_frames(tiny: tuple[Any, Any]) -> None:
    # transformers skips the delay pattern below 2K-1 positions; we decode a little more and cut.
    model, processor = tiny
    enc = _text(processor, PROMPTS[:1])
    longer = DgxBackend().decode(model, _request(enc, [GREEDY], 3.0, 8))
    for frames in (1, 2):
        got = DgxBackend().decode(model, _request(enc, [GREEDY], 3.0, frames))
        assert got.shape == (1, 4, frames)
        assert torch.equal(got, longer[..., :frames])  # decoding is causal


def test_transformers_backend_turns_guidance_off_and_cuts_short_requests(tiny: tuple[Any, Any]) -> None:
    # The baseline backend must agree with ours on both edges, or `bench --compare` compares
    # different work: cfg_coef 1.0 means no guidance (not the checkpoint's 3.0), and 1-2 frames work.
    from daemon.engine.decoding.hf import TransformersBackend

    model, processor = tiny
    enc = _text(processor, PROMPTS[:1])
    ours_plain = DgxBackend().decode(model, _request(enc, [GREEDY], 1.0, 12))
    theirs_plain = TransformersBackend().decode(model, _request(enc, [GREEDY], 1.0, 12))
    assert torch.equal(theirs_plain, ours_plain)
    for frames in (1, 2):
        got = TransformersBackend().decode(model, _request(enc, [GREEDY], 3.0, frames))
        assert got.shape == (1, 4, frames)
        assert torch.equal(got, DgxBackend().decode(model, _request(enc, [GREEDY], 3.0, frames)))


# ---------------------------------------------------------------- seeds and batching


def test_sampled_row_is_the_same_alone_and_batched(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    backend = DgxBackend()
    row = RowSampling(temperature=1.0, top_k=250, top_p=0.0, seed=1234)
    alone = backend.decode(model, _request(_text(processor, PROMPTS[:1]), [row], 3.0, 40))

    neighbours = [
        RowSampling(temperature=0.7, top_k=10, seed=99),
        row,
        RowSampling(top_p=0.9, seed=7),
    ]
    batch_enc = _text(processor, [PROMPTS[2], PROMPTS[0], PROMPTS[1]])
    batched = backend.decode(model, _request(batch_enc, neighbours, 3.0, 40))
    assert batched.shape == (3, 4, 40)
    assert torch.equal(batched[1], alone[0])

    other_seed = backend.decode(
        model, _request(_text(processor, PROMPTS[:1]), [RowSampling(seed=1235)], 3.0, 40)
    )
    assert not torch.equal(other_seed, alone)


def test_sampling_ignores_and_keeps_global_rng(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    enc = _text(processor, PROMPTS[:1])
    req = lambda: _request(enc, [RowSampling(seed=3)], 3.0, 20)  # noqa: E731
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = DgxBackend().decode(model, req())
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)
    second = DgxBackend().decode(model, req())
    assert torch.equal(first, second)


def test_greedy_rows_do_not_depend_on_sampling_neighbours(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    enc = _text(processor, PROMPTS[:2])
    greedy_pair = DgxBackend().decode(model, _request(enc, [GREEDY, GREEDY], 3.0, 20))
    mixed = DgxBackend().decode(model, _request(enc, [GREEDY, RowSampling(seed=5)], 3.0, 20))
    assert torch.equal(mixed[0], greedy_pair[0])


# ---------------------------------------------------------------- progress and abort


def test_on_step_reports_every_step(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    calls: list[tuple[int, int]] = []
    frames = 12
    DgxBackend().decode(
        model,
        _request(
            _text(processor, PROMPTS[:1]), [GREEDY], 3.0, frames, on_step=lambda s, n: calls.append((s, n))
        ),
    )
    total = frames + 3  # the delay pattern costs K - 1 steps
    assert calls == [(i, total) for i in range(1, total + 1)]


class _Stop(Exception):
    pass


def test_exception_in_on_step_aborts_the_decode(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    seen: list[int] = []

    def on_step(step: int, total: int) -> None:
        seen.append(step)
        if step == 3:
            raise _Stop("cancelled by the test")

    with pytest.raises(_Stop, match="cancelled by the test"):
        DgxBackend().decode(
            model, _request(_text(processor, PROMPTS[:1]), [GREEDY], 3.0, 50, on_step=on_step)
        )
    assert seen == [1, 2, 3]


def test_prompt_codes_of_the_wrong_shape_are_rejected(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    bad = torch.zeros((1, 3, 5), dtype=torch.long)  # the model has 4 codebooks
    with pytest.raises(ValueError, match="prompt_codes"):
        DgxBackend().decode(model, _request(_text(processor, PROMPTS[:1]), [GREEDY], 3.0, 5, bad))


# ---------------------------------------------------------------- the sampler on its own


def test_gumbel_sampling_follows_the_softmax() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    draws = 20000
    scores = logits.expand(1, draws, 4).clone()
    rows = [RowSampling(temperature=1.0, top_k=0, top_p=0.0, seed=42)]
    params = sampling_tensors(rows, 4, torch.device("cpu"))
    noise = RowNoise(rows, draws, 4, torch.device("cpu")).step(0)
    tokens = pick_tokens(scores, params, noise)[0]
    freq = torch.bincount(tokens, minlength=4).float() / draws
    assert torch.allclose(freq, logits.softmax(-1), atol=0.015)


def test_top_k_top_p_and_temperature_limit_the_choices() -> None:
    vocab, draws = 16, 4000
    logits = torch.linspace(3.0, -3.0, vocab).expand(1, draws, vocab).clone()
    cpu = torch.device("cpu")

    def sample(row: RowSampling) -> torch.Tensor:
        params = sampling_tensors([row], vocab, cpu)
        return pick_tokens(logits, params, RowNoise([row], draws, vocab, cpu).step(0))[0]

    assert set(sample(RowSampling(top_k=3, seed=1)).tolist()) == {0, 1, 2}
    # top-p wins over top-k when set (audiocraft; daemon.engine.decoding.api.RowSampling.filters)
    assert set(sample(RowSampling(top_k=3, top_p=0.05, seed=1)).tolist()) == {0}
    assert set(sample(RowSampling(top_k=0, top_p=0.6, seed=1)).tolist()) <= {0, 1, 2, 3}
    cold = sample(RowSampling(top_k=0, temperature=0.05, seed=1))
    hot = sample(RowSampling(top_k=0, temperature=5.0, seed=1))
    assert (cold == 0).float().mean() > 0.99
    assert len(set(hot.tolist())) > 10


def test_guidance_matches_transformers_formula() -> None:
    cond = torch.randn(2, 4, 8)
    uncond = torch.randn(2, 4, 8)
    guided = guide(torch.cat([cond, uncond]), 3.0, True)
    assert torch.equal(guided, uncond + (cond - uncond) * 3.0)
    assert torch.equal(guide(cond, 3.0, False), cond)


def test_noise_is_the_same_whatever_the_batch() -> None:
    cpu = torch.device("cpu")
    row = RowSampling(seed=77)
    alone = RowNoise([row], 4, 32, cpu, chunk_steps=4)
    batched = RowNoise([RowSampling(seed=1), None, row], 4, 32, cpu, chunk_steps=4)
    for step in range(9):  # across chunk boundaries
        a, b = alone.step(step), batched.step(step)
        assert a is not None and b is not None
        assert torch.equal(a[0], b[2])
        assert torch.count_nonzero(b[1]) == 0


# ---------------------------------------------------------------- musicgen-small widths (slow)


@pytest.fixture(scope="module")
def small_random(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """musicgen-small's widths, heads and FFN (and t5-base's) on two layers: every kernel runs at
    its real shape, and a layer that disagrees with transformers shows in the first one."""
    from daemon.ops.tinymodel import init_random

    directory = init_random(tmp_path_factory.mktemp("small") / "small", "small", layers=2)
    yield load_pretrained(directory)


@pytest.mark.slow
@pytest.mark.xdist_group("small-fp32")  # one worker builds the checkpoint for both
@pytest.mark.parametrize(
    "kernels, frames",
    [
        ("aten", 10),
        # the fused Triton kernels, in Triton's interpreter here: fewer frames, it is slow
        pytest.param(
            "triton",
            3,
            marks=pytest.mark.skipif(
                kernels_problem(torch.device("cpu")) is not None, reason="Triton is not installed"
            ),
        ),
    ],
)
def test_greedy_matches_transformers_at_the_musicgen_small_widths(
    small_random: tuple[Any, Any], kernels: str, frames: int
) -> None:
    model, processor = small_random
    enc = _text(processor, PROMPTS[:1])
    expected = hf_greedy_codes(model, enc, 3.0, frames)
    backend = DgxBackend(kernels=kernels)
    got = backend.decode(model, _request(enc, [GREEDY], 3.0, frames))
    assert backend.kernels_for(model) == kernels
    assert got.shape == (1, 4, frames)
    assert torch.equal(got, expected)


# ---------------------------------------------------------------- the CUDA-graph path's buffers, without CUDA
# Graph-shaped steps (`testseam`) run the graph path (bucketed batch/length/text, KV read in chunks
# with a position
# mask, in-place position and token updates) with the step executed instead of replayed.


@pytest.mark.parametrize("cfg_coef", [1.0, 3.0])
def test_static_bucket_path_equals_eager(tiny: tuple[Any, Any], cfg_coef: float) -> None:
    model, processor = tiny
    enc = _text(processor, PROMPTS)
    rows = [GREEDY, RowSampling(seed=8, top_k=20), RowSampling(seed=9, top_p=0.8, temperature=0.9)]
    eager = DgxBackend().decode(model, _request(enc, rows, cfg_coef, 30))
    static = run_steps(DgxBackend(length_multiple=64), GRAPH_SHAPED)
    got = static.decode(model, _request(enc, rows, cfg_coef, 30))
    assert [(b.rows, b.length, b.sampling) for b in static.buckets] == [(4, 64, True)]
    assert torch.equal(got, eager)


def test_static_bucket_is_reused_and_rows_are_batch_independent(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    backend = run_steps(DgxBackend(), GRAPH_SHAPED)
    row = RowSampling(seed=31)
    prompt = torch.randint(0, 64, (3, 4, 6), generator=torch.Generator().manual_seed(1))
    three = backend.decode(
        model, _request(_text(processor, PROMPTS), [GREEDY, row, RowSampling(seed=2)], 3.0, 25, prompt)
    )
    # batch 3 and batch 4 share the power-of-two bucket; a shorter length shares the length bucket
    four = backend.decode(
        model,
        _request(
            _text(processor, PROMPTS + PROMPTS[:1]),
            [RowSampling(seed=5), row, GREEDY, GREEDY],
            3.0,
            10,
            torch.cat([prompt, prompt[:1]]),
        ),
    )
    assert len(backend.buckets) == 1
    assert four.shape == (4, 4, 10)
    eager_row = DgxBackend().decode(
        model, _request(_text(processor, PROMPTS[1:2]), [row], 3.0, 25, prompt[1:2])
    )
    assert torch.equal(three[1], eager_row[0])


def test_static_path_reports_steps_and_aborts(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    calls: list[tuple[int, int]] = []

    def on_step(step: int, total: int) -> None:
        calls.append((step, total))
        if step == 4:
            raise _Stop("stop")

    with pytest.raises(_Stop):
        run_steps(DgxBackend(), GRAPH_SHAPED).decode(
            model, _request(_text(processor, PROMPTS[:1]), [GREEDY], 3.0, 20, on_step=on_step)
        )
    assert calls == [(1, 23), (2, 23), (3, 23), (4, 23)]


def test_oom_split_retry_runs_with_every_bucket_released(make_settings: Any) -> None:
    """The half-batch retry after an OOM must not find the failed batch's buckets still resident."""
    from daemon.core.messages import GenerationRequest
    from daemon.engine.model import MusicEngine

    class OomAfterBucket(DgxBackend):
        """CUDA cannot exist here: its OOM is raised after the bucket (its KV cache) was built."""

        def __init__(self) -> None:
            super().__init__()
            run_steps(self, GRAPH_SHAPED)
            self.seen: list[tuple[int, int]] = []

        def decode(self, model: Any, req: DecodeRequest) -> torch.Tensor:
            self.seen.append((len(req.rows), len(self.buckets)))
            out = super().decode(model, req)
            if len(req.rows) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return out

    backend = OomAfterBucket()
    engine = MusicEngine(make_settings(decoder="dgx"))
    decode_with(engine, backend)  # no load-time probe decode
    (res,) = engine.generate([GenerationRequest("techno loop", 0.5, seed=7, count=4)])
    assert res.audio.shape[0] == 4
    assert backend.seen == [(4, 0), (2, 0), (2, 1)]  # released before the retry; the halves share one


def test_failed_capture_falls_back_to_uncaptured_steps(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """CUDA stand-in: a capture that raises gives a working uncaptured bucket and one warning."""
    import logging

    from daemon.engine.decoding import graphs
    from daemon.engine.decoding.parts import model_parts

    model, processor = tiny

    def broken(self: Any) -> Any:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs.GraphBucket, "_capture", broken)
    backend = run_steps(DgxBackend(), GRAPH_SHAPED)
    req = _request(_text(processor, ["ambient pad"]), [GREEDY], 3.0, 5)
    key = backend.bucket_key(model, req)
    with caplog.at_level(logging.WARNING, logger="daemon.engine.decoding.dgx"), torch.inference_mode():
        first = backend._new_bucket(model_parts(model), key, True)
        assert first.graphs == [] and backend.capture_error is not None
    assert caplog.text.count("CUDA graph capture failed") == 1
    # The setup that status and the sidecar report says so (capture was on when the model loaded).
    from daemon.core.messages import DecodeSetup
    from daemon.engine.chooser import current_setup

    chosen = DecodeSetup("musicgen", "dgx", capture="on", kernels="aten")
    shown = current_setup(chosen, backend)  # type: ignore[arg-type]
    assert shown.capture == "failed" and shown.capture_error and "stream is capturing" in shown.capture_error
