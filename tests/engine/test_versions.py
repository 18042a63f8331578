"""What the engine does across transformers versions and machines: the layers' cache keyword, the
fallback to `generate` under `decoder: auto`, EnCodec in float32, and dtype auto on the CPU."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers.models.musicgen.modeling_musicgen import MusicgenDecoderLayer

from daemon.core.config import Settings
from daemon.core.errors import GenerationError
from daemon.engine.checkpoints import load_checkpoint
from daemon.engine.decoding.codec import codes_to_audio
from daemon.engine.decoding.dgx import DgxBackend
from daemon.engine.decoding.hf import TransformersBackend
from daemon.engine.decoding.parts import layer_cache_keyword
from daemon.engine.decoding.probe import dgx_problem
from daemon.engine.devices import cpu_has_native_bf16, resolve_dtype
from daemon.engine.model import MusicEngine

CPU = torch.device("cpu")


class _OldLayer:
    def forward(
        self,
        hidden_states: Any,
        attention_mask: Any = None,
        past_key_values: Any = None,
        use_cache: bool = True,
    ) -> Any: ...


class _NewLayer:
    def forward(self, hidden_states: Any, attention_mask: Any = None, cache: Any = None) -> Any: ...


class _RenamedLayer(MusicgenDecoderLayer):
    """A decoder layer as a future transformers might name its cache argument (neither known name)."""

    def forward(
        self,
        hidden_states: Any,
        attention_mask: Any = None,
        encoder_hidden_states: Any = None,  # type: ignore[override]
        encoder_attention_mask: Any = None,
        kv_store: Any = None,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> Any:
        return super().forward(
            hidden_states,
            attention_mask,
            encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            use_cache=use_cache,
            **{layer_cache_keyword(MusicgenDecoderLayer): kv_store},
        )


def test_the_cache_keyword_comes_from_the_layer_signature() -> None:
    assert layer_cache_keyword(_OldLayer) == "past_key_values"  # transformers 5.17
    assert layer_cache_keyword(_NewLayer) == "cache"  # transformers 5.24
    assert layer_cache_keyword(MusicgenDecoderLayer) in ("cache", "past_key_values")  # the installed one
    with pytest.raises(GenerationError, match="none of cache, past_key_values") as info:
        layer_cache_keyword(_RenamedLayer)
    assert "decoder: transformers" in (info.value.hint or "")


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
        layer.__class__ = _RenamedLayer
    engine = MusicEngine(settings)
    assert engine.backend.name == "dgx"
    with caplog.at_level(logging.WARNING, logger="daemon.engine.model"):
        backend = engine._checked_backend(ckpt)
    assert backend.name == "transformers" and engine.backend is backend
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
        layer.__class__ = _RenamedLayer
    engine = MusicEngine(settings)
    assert engine._checked_backend(ckpt).name == "dgx"  # the operator asked for it: its errors surface


def test_the_sidecar_and_stats_name_the_decoder_that_ran(make_settings: Callable[..., Settings]) -> None:
    engine = MusicEngine(make_settings(decoder="auto", dtype="float32"))
    info = engine.load_model("tiny")
    try:
        assert info.sidecar_fields()["decoder"] == "dgx"
        assert engine.get_stats().backend == "dgx"
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


def test_the_keyword_check_runs_once_per_layer_class(tiny_model_dir: Path) -> None:
    layer_cache_keyword.cache_clear()
    for _ in range(3):
        layer_cache_keyword(MusicgenDecoderLayer)
    assert layer_cache_keyword.cache_info().misses == 1
