"""The CUDA-graph decode path against the eager one and transformers (needs CUDA; skipped without it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from daemon.engine.decoding.api import DecodeRequest, RowSampling
from daemon.engine.decoding.dgx import DgxBackend
from daemon.engine.decoding.testseam import UNCAPTURED, run_steps
from tests.engine.test_fastdecode import hf_greedy_codes

pytestmark = pytest.mark.gpu

PROMPTS = ["warm lofi hip hop beat with dusty piano", "dark techno", "calm ambient pad with soft strings"]
GREEDY = RowSampling(greedy=True)


@pytest.fixture(scope="module")
def tiny_cuda(tiny_model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir).to("cuda").eval()
    return model, AutoProcessor.from_pretrained(tiny_model_dir)


def _request(
    processor: Any, prompts: list[str], rows: list[RowSampling], frames: int, **kw: Any
) -> DecodeRequest:
    enc = processor(text=prompts, padding=True, return_tensors="pt")
    return DecodeRequest(
        input_ids=enc["input_ids"].to("cuda"),
        attention_mask=enc["attention_mask"].to("cuda"),
        rows=rows,
        cfg_coef=kw.pop("cfg_coef", 3.0),
        max_frames=frames,
        **kw,
    )


@pytest.mark.parametrize("cfg_coef", [1.0, 3.0])
def test_graph_greedy_equals_eager(tiny_cuda: tuple[Any, Any], cfg_coef: float) -> None:
    model, processor = tiny_cuda
    req = lambda: _request(processor, PROMPTS, [GREEDY] * 3, 40, cfg_coef=cfg_coef)  # noqa: E731
    eager = run_steps(DgxBackend(), UNCAPTURED).decode(model, req())
    graphs = DgxBackend(batch_invariant="off")
    captured = graphs.decode(model, req())
    assert len(graphs.buckets) == 1 and graphs.buckets[0].rows == 4  # batch 3 padded to 4
    assert captured.shape == eager.shape == (3, 4, 40)
    assert torch.equal(captured, eager)


def test_graph_sampling_equals_eager_and_ignores_batch(tiny_cuda: tuple[Any, Any]) -> None:
    model, processor = tiny_cuda
    row = RowSampling(seed=2024)
    rows = [RowSampling(seed=1, temperature=0.7, top_k=20), row, RowSampling(seed=3, top_p=0.9)]
    eager = run_steps(DgxBackend(), UNCAPTURED).decode(model, _request(processor, PROMPTS, rows, 30))
    graphs = DgxBackend()
    batched = graphs.decode(model, _request(processor, PROMPTS, rows, 30))
    alone = graphs.decode(model, _request(processor, PROMPTS[1:2], [row], 30))
    assert torch.equal(batched, eager)
    assert torch.equal(alone[0], batched[1])
    again = graphs.decode(model, _request(processor, PROMPTS, rows, 30))
    assert torch.equal(again, batched)


def test_buckets_are_reused_across_batch_sizes_and_lengths(tiny_cuda: tuple[Any, Any]) -> None:
    model, processor = tiny_cuda
    backend = DgxBackend(length_multiple=128, batch_invariant="off")
    backend.decode(model, _request(processor, PROMPTS, [GREEDY] * 3, 20))
    backend.decode(model, _request(processor, PROMPTS + PROMPTS[:1], [GREEDY] * 4, 50))
    assert len(backend.buckets) == 1
    backend.decode(model, _request(processor, PROMPTS[:1], [GREEDY], 20))
    assert len(backend.buckets) == 2


def test_graph_prompt_continuation_and_on_step(tiny_cuda: tuple[Any, Any]) -> None:
    model, processor = tiny_cuda
    prompt = torch.randint(0, 64, (2, 4, 9), device="cuda")
    calls: list[tuple[int, int]] = []

    def req(cb: Any = None) -> DecodeRequest:
        return _request(
            processor,
            PROMPTS[:2],
            [GREEDY, RowSampling(seed=4)],
            15,
            prompt_codes=prompt,
            on_step=cb,
        )

    eager = run_steps(DgxBackend(), UNCAPTURED).decode(model, req())
    got = DgxBackend().decode(model, req(lambda s, n: calls.append((s, n))))
    assert torch.equal(got, eager)
    assert calls == [(i, 18) for i in range(1, 19)]


def test_graph_decode_aborts_on_exception(tiny_cuda: tuple[Any, Any]) -> None:
    model, processor = tiny_cuda

    def stop(step: int, total: int) -> None:
        if step == 5:
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        DgxBackend().decode(model, _request(processor, PROMPTS[:1], [GREEDY], 40, on_step=stop))


@pytest.mark.parametrize("cfg_coef", [1.0, 3.0])
def test_chunked_graphs_replay_and_match_transformers_greedy(
    tiny_cuda: tuple[Any, Any], cfg_coef: float
) -> None:
    model, processor = tiny_cuda
    frames = 70  # 74 positions: five attention chunks of 16, so five graphs take turns
    backend = DgxBackend(length_multiple=16, attention_chunk=16, batch_invariant="off")
    got = backend.decode(model, _request(processor, PROMPTS[:2], [GREEDY] * 2, frames, cfg_coef=cfg_coef))
    (key,) = backend.buckets
    bucket = backend.bucket(key)
    assert bucket is not None and len(bucket.graphs) == len(bucket.ends) == 5
    steps = frames + 4 - 1  # the delayed length minus the start token
    assert bucket.replays == steps - 1  # every step after the eager prefill was a graph replay
    enc = processor(text=PROMPTS[:2], padding=True, return_tensors="pt").to("cuda")
    assert torch.equal(got, hf_greedy_codes(model, enc, cfg_coef, frames))


def test_chunked_graph_sampling_equals_eager(tiny_cuda: tuple[Any, Any]) -> None:
    model, processor = tiny_cuda
    rows = [
        RowSampling(seed=1, temperature=0.7, top_k=20),
        RowSampling(seed=2),
        RowSampling(seed=3, top_p=0.9),
    ]
    eager = run_steps(DgxBackend(), UNCAPTURED).decode(model, _request(processor, PROMPTS, rows, 60))
    backend = DgxBackend(length_multiple=16, attention_chunk=24, batch_invariant="off")
    got = backend.decode(model, _request(processor, PROMPTS, rows, 60))
    bucket = backend.bucket(backend.buckets[0])
    assert bucket is not None and bucket.ends == [24, 48, 64] and bucket.replays == 60 + 4 - 2
    assert torch.equal(got, eager)


def test_prepared_bucket_is_captured_before_the_job(tiny_cuda: tuple[Any, Any]) -> None:
    model, processor = tiny_cuda
    backend = DgxBackend(attention_chunk=32, batch_invariant="off")
    (key,) = backend.prepare(model, rows=4, frames=200, text_tokens=16)
    bucket = backend.bucket(key)
    assert bucket is not None and len(bucket.graphs) == 8 and bucket.replays == 0
    assert bucket.capture_s > 0 and bucket.nbytes() > bucket.buffer_bytes()  # the graph pool counts
    rows = [RowSampling(seed=5), RowSampling(seed=6), GREEDY]
    sampled = backend.decode(model, _request(processor, PROMPTS, rows, 30))
    greedy = backend.decode(model, _request(processor, PROMPTS, [GREEDY] * 3, 30))
    assert backend.buckets == [key]  # both found the prepared bucket: no capture during the jobs
    assert bucket.replays == 2 * (30 + 4 - 2)
    assert torch.equal(
        sampled, run_steps(DgxBackend(), UNCAPTURED).decode(model, _request(processor, PROMPTS, rows, 30))
    )
    assert torch.equal(greedy[2], sampled[2])


def test_a_job_alone_and_in_a_mixed_batch_of_eight_gives_the_same_tokens_in_bf16_graphs(
    tiny_model_dir: Path,
) -> None:
    """Batch invariance where it is at risk: bf16 kernels chosen by shape, in captured graphs."""
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir).to("cuda", torch.bfloat16).eval()
    model.audio_encoder.float()
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    job = RowSampling(seed=1234)
    prompts = [
        "dark techno",
        "calm ambient pad with soft strings",
        "a very long prompt about an orchestral film score with soaring strings and a choir",
        "drums",
        "warm lofi hip hop beat with dusty piano",
        "jazz trio, brushed snare, upright bass, late night",
        "chiptune boss battle theme, fast arpeggios",
        "rain",
    ]
    rows = [RowSampling(seed=s, temperature=0.6 + 0.1 * s, top_k=20 * (s + 1)) for s in range(8)]
    rows[4] = job
    backend = DgxBackend()  # auto: batch-invariant with graphs
    assert backend.invariant(model) and backend.uses_graphs(model)
    (prepared,) = backend.prepare(model, rows=3, frames=60)  # as the daemon's warm-up does
    assert prepared.rows == backend.fixed_rows == 1  # a job decodes at its own size
    alone = backend.decode(model, _request(processor, [prompts[4]], [job], 60))
    assert backend.buckets == [prepared]  # the job alone decodes in the prepared fixed-shape bucket
    batched = backend.decode(model, _request(processor, prompts, rows, 60))
    assert {b.rows for b in backend.buckets} == {backend.fixed_rows}
    assert torch.equal(batched[4], alone[0])
    assert len({tuple(r.flatten().tolist()) for r in batched}) == 8
    # Without fixed shapes the same pair is not promised to agree (it is what the setting is for);
    # its outcome is recorded, not asserted.
    off = DgxBackend(batch_invariant="off")
    same = torch.equal(
        off.decode(model, _request(processor, prompts, rows, 60))[4],
        off.decode(model, _request(processor, [prompts[4]], [job], 60))[0],
    )
    print(f"batch_invariant off: alone == batched: {same}")


def _synchronizing_calls(fn: Any) -> int:
    """How many synchronizing CUDA calls `fn()` makes (torch's sync debug mode, warn level)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


@pytest.mark.parametrize("rows", [1, 8])
def test_host_syncs_per_decode_do_not_grow_with_the_length_or_the_batch(
    tiny_cuda: tuple[Any, Any], rows: int
) -> None:
    """No per-element (delay pattern) or per-step host reads: a decode's syncs are a constant few."""
    model, processor = tiny_cuda
    prompts = (PROMPTS * 3)[:rows]
    samplers = [RowSampling(seed=s) for s in range(rows)]
    backend = DgxBackend()
    backend.prepare(model, rows=rows, frames=400)  # captures happen here, not in the counted decodes
    short = _synchronizing_calls(lambda: backend.decode(model, _request(processor, prompts, samplers, 50)))
    long = _synchronizing_calls(lambda: backend.decode(model, _request(processor, prompts, samplers, 400)))
    assert long == short, (short, long)
    # A constant few: copies in and out, the text encoder's mask checks. A per-element pattern
    # build would be hundreds (B x K x length), a per-step read one per step.
    assert short <= 64, short


@pytest.mark.parametrize("kernels", ["triton", "aten"])
def test_graphs_on_either_kernels_match_transformers_greedy_and_replay(
    tiny_cuda: tuple[Any, Any], kernels: str
) -> None:
    model, processor = tiny_cuda
    backend = DgxBackend(length_multiple=16, attention_chunk=16, kernels=kernels)
    got = backend.decode(model, _request(processor, PROMPTS[:2], [GREEDY] * 2, 40))
    assert backend.kernels_for(model) == kernels  # the load check passed: no silent fallback
    (key,) = backend.buckets
    bucket = backend.bucket(key)
    assert bucket is not None and bucket.replays > 0 and bucket.kernels == kernels
    enc = processor(text=PROMPTS[:2], padding=True, return_tensors="pt").to("cuda")
    assert torch.equal(got, hf_greedy_codes(model, enc, 3.0, 40))


def test_the_op_count_is_the_kernel_count_on_cuda(tiny_cuda: tuple[Any, Any]) -> None:
    """`bench --ops` counts ATen ops and Triton launches as a proxy for the kernels a graph replays:
    on CUDA the profiler's kernel count of the same step says how faithful it is."""
    from daemon.ops.opcount import count_decode_step

    model, processor = tiny_cuda
    fused = count_decode_step(model, processor, kernels="triton")
    plain = count_decode_step(model, processor, kernels="aten")
    assert fused["ops_per_layer"] == 8 and plain["ops_per_layer"] == 13
    print("cuda kernels per step:", fused["cuda_kernels_per_step"], plain["cuda_kernels_per_step"])
    # An attention or a matmul may be two kernels (a split-K reduction); a copy of nothing none.
    for report in (fused, plain):
        assert 0.8 * report["ops_per_step"] <= report["cuda_kernels_per_step"] <= 1.3 * report["ops_per_step"]
    layers = fused["layers"]
    assert plain["cuda_kernels_per_step"] - fused["cuda_kernels_per_step"] >= 4 * layers
