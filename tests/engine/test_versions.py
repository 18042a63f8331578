"""What the engine does across transformers versions and machines: the fallback to `generate` under
`decoder: auto` when the dgx loop does not reproduce the installed transformers' decoder, EnCodec in
float32, and dtype auto on the CPU.

The dgx loop reads the decoder layers' weights and never calls their forward, so the cache keyword
that changed between transformers 5.17 (`past_key_values=`) and 5.24 (`cache=`) cannot break it;
what could is a release whose layers compute something else. The probe at load catches that."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers.models.musicgen.modeling_musicgen import MusicgenDecoderLayer

from daemon.core.config import Settings
from daemon.engine.checkpoints import load_checkpoint
from daemon.engine.chooser import choose_setup
from daemon.engine.decoding.codec import codes_to_audio
from daemon.engine.decoding.dgx import DgxBackend
from daemon.engine.decoding.hf import TransformersBackend
from daemon.engine.decoding.probe import dgx_problem
from daemon.engine.devices import cpu_has_native_bf16, resolve_dtype
from daemon.engine.model import MusicEngine

CPU = torch.device("cpu")


class _AlteredLayer(MusicgenDecoderLayer):
    """A decoder layer as a future transformers might compute it: not what the dgx loop does."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        out = super().forward(*args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        tilt = torch.linspace(0.25, 1.75, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        return (hidden * tilt, *out[1:]) if isinstance(out, tuple) else hidden * tilt


def test_the_dgx_loop_passes_its_check_on_the_tiny_model(tiny_settings: Settings) -> None:
    ckpt = load_checkpoint(
        "tiny", tiny_settings.model_copy(update={"dtype": "float32"}), device=CPU, dtype=torch.float32
    )
    assert dgx_problem(DgxBackend(), TransformersBackend(), ckpt.model, ckpt.processor) is None


def test_auto_falls_back_to_generate_with_one_warning_when_the_loop_cannot_run(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(decoder="auto", dtype="float32")
    ckpt = load_checkpoint("tiny", settings, device=CPU, dtype=torch.float32)
    for layer in ckpt.model.decoder.model.decoder.layers:
        layer.__class__ = _AlteredLayer
    with caplog.at_level(logging.WARNING, logger="daemon.engine.chooser"):
        backend, setup = choose_setup(settings, ckpt)
    assert backend.name == "transformers" and setup.decoder == "transformers"
    # The decision is part of the setup that status and the sidecar report.
    assert setup.fallback is not None and "load check" in setup.fallback and setup.load_check
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "using transformers generate" in warnings[0].getMessage()
    # The fallback decodes this very model.
    enc = ckpt.processor(text=["a test prompt"], padding=True, return_tensors="pt")
    from daemon.engine.decoding.api import DecodeRequest, RowSampling

    codes = backend.decode(
        ckpt.model, DecodeRequest(enc["input_ids"], enc["attention_mask"], [RowSampling(greedy=True)], 1.0, 4)
    )
    assert codes.shape[-1] == 4


def test_an_explicit_dgx_decoder_is_not_replaced(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(decoder="dgx", dtype="float32")
    ckpt = load_checkpoint("tiny", settings, device=CPU, dtype=torch.float32)
    for layer in ckpt.model.decoder.model.decoder.layers:
        layer.__class__ = _AlteredLayer
    backend, setup = choose_setup(settings, ckpt)
    assert backend.name == "dgx" and setup.fallback is None  # the operator asked for it: its errors surface


def test_the_sidecar_and_stats_name_the_decoder_that_ran(make_settings: Callable[..., Settings]) -> None:
    engine = MusicEngine(make_settings(decoder="auto", dtype="float32"))
    info = engine.load_model("tiny")
    try:
        assert info.sidecar_fields()["decoder"] == "dgx"
        assert engine.get_stats().backend == "dgx"
        assert info.setup is not None and info.setup.load_check and info.setup.kernels == "aten"
    finally:
        engine.unload_model()


def test_encodec_runs_in_float32_whatever_the_lm_dtype(tiny_settings: Settings) -> None:
    ckpt = load_checkpoint("tiny", tiny_settings, device=CPU, dtype=torch.bfloat16)
    model = ckpt.model
    assert {p.dtype for p in model.audio_encoder.parameters()} == {torch.float32}
    assert {p.dtype for p in model.decoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.text_encoder.parameters()} == {torch.bfloat16}
    codes = torch.zeros((1, model.config.decoder.num_codebooks, 8), dtype=torch.long)
    audio = codes_to_audio(model, codes)
    assert audio.dtype == torch.float32 and audio.shape[0] == 1 and torch.isfinite(audio).all()


X86_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n"
X86_PLAIN = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
ARM_PLAIN = "processor\t: 0\nFeatures\t: fp asimd crc32\n"


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert cpu_has_native_bf16(X86_BF16) and cpu_has_native_bf16(ARM_BF16)
    assert cpu_has_native_bf16("flags\t: fpu amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16(X86_PLAIN) and not cpu_has_native_bf16(ARM_PLAIN)
    assert not cpu_has_native_bf16("flags\t: avx512_bf16x\n")  # whole words only


def test_dtype_auto_on_the_cpu_follows_native_bf16() -> None:
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", CPU) == expected
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16  # bench --dtype bfloat16 runs at it
    assert resolve_dtype("float16", CPU) == torch.float32
    assert resolve_dtype("float32", CPU) == torch.float32
