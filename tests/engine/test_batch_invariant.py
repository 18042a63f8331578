"""A job's tokens alone and inside a batch of other jobs, in bfloat16: the same (batch invariance).

The dgx loop's bucket path with `batch_invariant` on decodes every call at a fixed row count and
each row's text at a length set by its own tokens; the CPU eager loop computes each row alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from daemon.core.messages import setup_summary
from daemon.engine.chooser import describe, reproducibility
from daemon.engine.decoding.api import DecodeRequest, RowSampling
from daemon.engine.decoding.dgx import DgxBackend
from daemon.engine.decoding.testseam import GRAPH_SHAPED, run_steps

JOB_PROMPT = "warm lofi hip hop beat with dusty piano"
JOB = RowSampling(temperature=1.0, top_k=250, seed=1234)
# Batch mates of several token lengths (text buckets of 32), settings and seeds.
MATES = [
    ("dark techno", RowSampling(temperature=0.7, top_k=10, seed=99)),
    ("calm ambient pad with soft strings", RowSampling(top_p=0.9, seed=7)),
    (
        "a very long prompt about an orchestral film score with soaring strings, brass fanfares, "
        "timpani rolls and a choir singing in the distance",
        RowSampling(seed=3),
    ),
    ("drums", RowSampling(greedy=True)),
    ("jazz trio, brushed snare, upright bass, late night", RowSampling(temperature=1.3, seed=42)),
    (
        "chiptune boss battle theme, fast arpeggios, square waves and noise drums, 8-bit console",
        RowSampling(top_k=50, seed=5),
    ),
    ("rain", RowSampling(seed=11)),
]
JOB_INDEX = 4  # where the job sits in the batch of eight


def _bf16(directory: Path) -> tuple[Any, Any]:
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(directory).eval()
    model.to(torch.bfloat16)
    model.audio_encoder.float()
    return model, AutoProcessor.from_pretrained(directory)


@pytest.fixture(scope="module")
def tiny_bf16(tiny_model_dir: Path) -> tuple[Any, Any]:
    return _bf16(tiny_model_dir)


@pytest.fixture(scope="module")
def small_bf16(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """musicgen-small's widths, heads and FFN, and its t5-base text encoder's, on two layers each
    (of 24 and 12): every matmul and attention call has the real shape, and batch invariance is a
    property of each layer, so the depth only multiplies the time."""
    from daemon.ops.tinymodel import init_random

    yield _bf16(init_random(tmp_path_factory.mktemp("small") / "small", "small", layers=2))


def _request(
    processor: Any, prompts: list[str], rows: list[RowSampling], frames: int, **kw: Any
) -> DecodeRequest:
    enc = processor(text=prompts, padding=True, return_tensors="pt")
    return DecodeRequest(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        rows=rows,
        cfg_coef=kw.pop("cfg_coef", 3.0),
        max_frames=frames,
        **kw,
    )


def _batch_of_eight() -> tuple[list[str], list[RowSampling]]:
    mates = list(MATES)
    mates.insert(JOB_INDEX, (JOB_PROMPT, JOB))
    return [p for p, _ in mates], [r for _, r in mates]


def _alone_and_batched(model: Any, processor: Any, backend: DgxBackend, frames: int) -> tuple[Any, Any]:
    alone = backend.decode(model, _request(processor, [JOB_PROMPT], [JOB], frames))
    prompts, rows = _batch_of_eight()
    batched = backend.decode(model, _request(processor, prompts, rows, frames))
    return alone, batched


def _text_buckets(processor: Any, prompts: list[str], multiple: int = 32) -> set[int]:
    enc = processor(text=prompts, padding=True, return_tensors="pt")
    return {-(-int(n) // multiple) * multiple for n in enc["attention_mask"].sum(dim=1)}


@pytest.mark.parametrize(
    "steps, invariant", [(None, "auto"), (GRAPH_SHAPED, "on")], ids=["cpu-eager", "fixed-shapes"]
)
def test_a_job_alone_and_in_a_mixed_batch_of_eight_gives_the_same_tokens_in_bf16(
    tiny_bf16: tuple[Any, Any], steps: str | None, invariant: str
) -> None:
    model, processor = tiny_bf16
    assert len(_text_buckets(processor, _batch_of_eight()[0])) >= 2  # the batch spans text buckets
    backend = DgxBackend(batch_invariant=invariant, length_multiple=64)
    if steps is not None:
        run_steps(backend, steps)
    alone, batched = _alone_and_batched(model, processor, backend, 30)
    assert batched.shape == (8, 4, 30)
    assert torch.equal(batched[JOB_INDEX], alone[0])
    # ... and the batch is not a copy of one row: the mates' own prompts and seeds show.
    assert len({tuple(row.flatten().tolist()) for row in batched}) == 8
    if steps is not None:
        assert {b.rows for b in backend.buckets} == {1}  # each job at its own size, alone and batched


@pytest.mark.slow
@pytest.mark.xdist_group("small-bf16")  # one worker builds the checkpoint for both
@pytest.mark.parametrize(
    "steps, invariant", [(None, "auto"), (GRAPH_SHAPED, "on")], ids=["cpu-eager", "fixed-shapes"]
)
def test_same_tokens_alone_and_batched_at_the_musicgen_small_widths_in_bf16(
    small_bf16: tuple[Any, Any], steps: str | None, invariant: str
) -> None:
    model, processor = small_bf16
    backend = DgxBackend(batch_invariant=invariant, length_multiple=64)
    if steps is not None:
        run_steps(backend, steps)
    alone, batched = _alone_and_batched(model, processor, backend, 12)
    assert torch.equal(batched[JOB_INDEX], alone[0])


def test_fixed_shapes_pad_every_call_to_the_fixed_rows_and_decode_text_buckets_apart(
    tiny_bf16: tuple[Any, Any],
) -> None:
    model, processor = tiny_bf16
    long_prompt = MATES[2][0]
    prompts = ["dark techno", long_prompt, "rain"]
    rows = [RowSampling(seed=1), RowSampling(seed=2), RowSampling(seed=3)]
    short, long = sorted(_text_buckets(processor, prompts))
    assert short == 32 and long > 32
    backend = run_steps(DgxBackend(batch_invariant="on", fixed_rows=8, length_multiple=64), GRAPH_SHAPED)
    calls: list[tuple[int, int]] = []
    got = backend.decode(
        model, _request(processor, prompts, rows, 10, on_step=lambda s, n: calls.append((s, n)))
    )
    # Two calls (one per text bucket), each at 8 rows; progress counts over both.
    assert sorted((b.rows, b.text_length) for b in backend.buckets) == [(8, short), (8, long)]
    steps = calls[-1][1] // 2
    assert calls == [(i, 2 * steps) for i in range(1, 2 * steps + 1)]
    # Rows come back in request order: each is what that row gives decoded alone.
    for i, (prompt, row) in enumerate(zip(prompts, rows)):
        alone = backend.decode(model, _request(processor, [prompt], [row], 10))
        assert torch.equal(got[i], alone[0]), f"row {i}"
    assert len(backend.buckets) == 2  # alone, a row reuses its bucket: rows and text are fixed
    # More rows than the fixed count are decoded in several fixed-size calls.
    many = backend.decode(
        model, _request(processor, ["rain"] * 9, [RowSampling(seed=s) for s in range(9)], 10)
    )
    assert many.shape == (9, 4, 10) and torch.equal(
        many[3], backend.decode(model, _request(processor, ["rain"], [RowSampling(seed=3)], 10))[0]
    )


def _facts(backend: DgxBackend, model: Any) -> dict[str, Any]:
    """The sidecar's reproducibility facts for `backend` on `model`, as the engine reports them."""
    return reproducibility(describe(backend, model), backend, model)


def test_batch_invariant_auto_on_and_off(tiny_bf16: tuple[Any, Any]) -> None:
    model, processor = tiny_bf16
    req = lambda: _request(processor, ["rain", "dark techno"], [JOB, JOB], 5)  # noqa: E731
    auto = run_steps(DgxBackend(), GRAPH_SHAPED)
    auto.decode(model, req())
    assert not auto.invariant(model) and [b.rows for b in auto.buckets] == [2]  # CPU: auto is off
    on_eager = DgxBackend(batch_invariant="on", fixed_rows=4)
    on_eager.decode(model, req())
    assert [b.rows for b in on_eager.buckets] == [4]  # "on" runs the fixed shapes even without graphs
    assert DgxBackend().buckets == []
    assert _facts(on_eager, model)["by_construction"] is True
    cpu = _facts(DgxBackend(), model)
    assert (cpu["batch_mates"], cpu["by_construction"]) == ("independent", False)


def test_the_engine_builds_the_backend_from_the_settings_and_reports_reproducibility(
    make_settings: Any,
) -> None:
    from daemon.core.messages import GenerationRequest
    from daemon.engine.model import MusicEngine
    from jobspec.sidecar import Reproducibility

    engine = MusicEngine(make_settings(decoder="dgx", batch_invariant="on", max_batch=3))
    info = engine.load_model()
    backend = engine.loaded.backend  # type: ignore[union-attr]
    # A job decodes at its own size (one row), whatever max_batch lets the daemon batch.
    assert isinstance(backend, DgxBackend) and backend.fixed_rows == 1 and backend.batch_invariant == "on"
    assert info.setup is not None and info.setup.rows == 1 and info.setup.batch_invariant
    assert "1 row per call" in setup_summary(info.setup.report())
    (res,) = engine.generate([GenerationRequest("techno loop", 0.25, seed=7)])
    assert res.reproducibility is not None
    repro = Reproducibility(**res.reproducibility)
    assert repro.batch_mates == "independent" and repro.by_construction
    assert "1 row per call" in repro.basis and "seed" in repro.requires
    assert repro.basis.endswith("on the aten kernels")  # the CPU's step (kernels auto)
    assert any(r.startswith("kernels") for r in repro.requires)

    hf = MusicEngine(make_settings(decoder="transformers"))
    (res,) = hf.generate([GenerationRequest("techno loop", 0.25, seed=7)])
    assert res.reproducibility is not None and res.reproducibility["batch_mates"] == "same_job_only"
