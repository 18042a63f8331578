"""Checkpoints: made-up ones load through the production path; load errors are typed and actionable."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_tiny_checkpoint_loads_like_a_hub_checkpoint(tiny_model_dir: Path) -> None:
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir)
    assert type(processor).__name__ == "MusicgenProcessor"
    assert model.config.decoder.num_codebooks == 4
    assert model.config.audio_encoder.sampling_rate == 32000
    assert model.config.audio_encoder.frame_rate == 40
    tokens = processor.tokenizer.convert_ids_to_tokens(processor(text=["Warm dusty piano"])["input_ids"][0])
    assert tokens == ["▁Warm", "▁dusty", "▁piano", "</s>"]
    assert (tiny_model_dir / "model.safetensors").stat().st_mode & 0o044 == 0o044
