"""Engine tests run through both decode loops: the one that ships (dgx) and the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def load_pretrained(directory: Path) -> tuple[Any, Any]:
    """A checkpoint directory as (model in eval mode, processor)."""
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(directory).eval()
    return model, AutoProcessor.from_pretrained(directory)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    """The tiny checkpoint, loaded once per test module."""
    return load_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def tiny_stereo(tiny_stereo_model_dir: Path) -> tuple[Any, Any]:
    return load_pretrained(tiny_stereo_model_dir)


@pytest.fixture(params=["dgx", "transformers"])
def decoder(request: pytest.FixtureRequest) -> str:
    return str(request.param)
