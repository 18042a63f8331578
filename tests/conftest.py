"""Shared fixtures: a tiny random MusicGen checkpoint (built once per session) and settings that use it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.core.config import Settings, load_settings


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# Without a GPU the fused step's Triton kernels run in Triton's interpreter, which has to be chosen
# before anything imports Triton (transformers' MusicGen does).
if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests skip cleanly on machines without CUDA."""
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mono MusicGen checkpoint (32 kHz, 40 frames/s, 4 codebooks), saved like a hub one."""
    import torch

    from daemon.ops.tinymodel import init_tiny

    # A tiny model gains nothing from intra-op threads, and on a shared 2-core box their
    # spin-waiting makes every step many times slower.
    torch.set_num_threads(1)

    return init_tiny(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture(scope="session")
def tiny_stereo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny stereo MusicGen checkpoint (8 codebooks interleaved left/right, as musicgen-stereo)."""
    from daemon.ops.tinymodel import init_tiny

    return init_tiny(tmp_path_factory.mktemp("tiny-stereo") / "tiny-stereo", stereo=True)


@pytest.fixture(scope="session")
def tiny_melody_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny musicgen-melody checkpoint (model_type musicgen_melody, chroma conditioning)."""
    from daemon.ops.tinymodel import init_tiny

    return init_tiny(tmp_path_factory.mktemp("tiny-melody") / "tiny-melody", melody=True)


@pytest.fixture(scope="session")
def tiny_acestep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ACE-Step 1.5 turbo pipeline (48 kHz stereo, 31.25 latent frames/s), MIT model card."""
    import torch

    from daemon.ops.tinyacestep import init_tiny

    torch.set_num_threads(1)
    return init_tiny(tmp_path_factory.mktemp("tiny-acestep") / "tiny-song")


@pytest.fixture
def make_settings(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., Settings]:
    """Settings for the tiny model on CPU with the spool under tmp_path; keyword overrides win."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "spool": tmp_path / "spool",
            "models": {"tiny": {"path": str(tiny_model_dir)}},
            "default_model": "tiny",
            "device": "cpu",
            # Tests assert exact float32 results; dtype auto (bf16 on CPUs that have it) has its own tests.
            "dtype": "float32",
            "warmup": False,
        }
        values.update(overrides)
        return load_settings(None, **values)

    return make


@pytest.fixture
def tiny_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()
