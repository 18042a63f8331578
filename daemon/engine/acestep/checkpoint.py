"""ACE-Step 1.5 checkpoints: check one, fetch it into the hub cache, load it as an AceStepPipeline.

A checkpoint is a diffusers pipeline folder: model_index.json naming `AceStepPipeline` and one
subfolder per component (transformer, condition_encoder, text_encoder, tokenizer, vae, scheduler).
Hub checkpoints go through the same snapshot, cache and offline rules as MusicGen ones
(`daemon.engine.checkpoints.snapshot`, `daemon.engine.hub`); local ones are fingerprinted by
content. The weights' licence is read from the model card's metadata (README.md front matter),
and the config's `license` overrides it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.core.config import Settings
from daemon.core.errors import ModelLoadError
from daemon.engine.acestep.layout import NETWORKS, check_local_dir, components
from daemon.engine.checkpoints import local_revision, quiet_transformers, resolve_spec, snapshot
from daemon.engine.hub import card_license, hf_cache_dir, hf_offline
from daemon.engine.loadable import loadability

log = logging.getLogger(__name__)

_HUB_PATTERNS = ["model_index.json", "README.md", "*/*.json", "*/*.safetensors", "*/*.txt", "*/*.model"]


@dataclass(frozen=True)
class LoadedPipeline:
    """A pipeline ready for the family, with what the sidecar records about where it came from."""

    name: str
    source: str  # hub repo id or local path
    revision: str  # commit hash for hub checkpoints, "local:<sha256>" for directories
    pipe: Any  # diffusers AceStepPipeline, on its device, in eval mode
    license: str | None  # the weights' licence (model card or config); None when unknown
    turbo: bool  # guidance distilled into the weights: classifier-free guidance is not run


def pipeline_revision(directory: Path) -> str:
    """A content fingerprint of a local pipeline: its model_index.json and each component's."""
    h = hashlib.sha256((directory / "model_index.json").read_bytes())
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        h.update(sub.name.encode() + b"\0" + local_revision(sub).encode())
    return "local:" + h.hexdigest()


def fetch(name: str, settings: Settings) -> Path:
    """Download ACE-Step model `name` into the hub cache (a local directory is only checked)."""
    spec = resolve_spec(name, settings)
    if spec.path is not None:
        check_local_dir(name, Path(spec.path).expanduser())
        return Path(spec.path)
    if hf_offline():
        raise ModelLoadError(
            f"cannot fetch model {name!r} ({spec.id}): HF_HUB_OFFLINE is set",
            hint="unset HF_HUB_OFFLINE and run again on a machine with network access",
        )
    return snapshot(name, spec, local_files_only=False, patterns=_HUB_PATTERNS)


def locate(name: str, settings: Settings) -> tuple[Path, str, str]:
    """(directory, source, revision) of model `name`: a local directory, or its hub snapshot
    (downloaded if allowed, from the cache offline)."""
    spec = resolve_spec(name, settings)
    if spec.path is not None:
        directory = Path(spec.path).expanduser()
        check_local_dir(name, directory)
        return directory, str(directory), pipeline_revision(directory)
    directory = snapshot(name, spec, local_files_only=False, patterns=_HUB_PATTERNS)
    check_local_dir(name, directory)
    return directory, str(spec.id), directory.name  # snapshots/<commit hash>


def load_pipeline(name: str, settings: Settings, *, device: Any, dtype: Any) -> LoadedPipeline:
    """AceStepPipeline for model `name` on `device` in `dtype`, its progress bar off, the VAE
    decoding row by row (a row's audio never depends on its batch mates) and in overlapping
    tiles for long songs (bounded memory)."""
    import torch

    spec = resolve_spec(name, settings)
    # The check doctor makes too: what fails here makes doctor fail, and the other way round.
    loadability(name, spec).raise_unless_ok()
    directory, source, revision = locate(name, settings)
    from diffusers import AceStepPipeline
    from diffusers.utils import logging as df_logging

    level = df_logging.get_verbosity()
    df_logging.set_verbosity_error()
    df_logging.disable_progress_bar()
    try:
        with quiet_transformers():
            pipe = AceStepPipeline.from_pretrained(directory, dtype=dtype)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise _oom_at_load(name, device, exc) from exc
        raise ModelLoadError(
            f"model {name!r}: cannot load the ACE-Step pipeline in {directory}: {exc}",
            hint="the checkpoint is damaged or from an incompatible diffusers version: copy or download "
            "it again, or install the diffusers version pyproject.toml allows",
        ) from exc
    finally:
        df_logging.set_verbosity(level)
        df_logging.enable_progress_bar()
    try:
        pipe = pipe.to(device)
    except torch.OutOfMemoryError as exc:
        del pipe
        raise _oom_at_load(name, device, exc) from exc
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling()
    for net in NETWORKS:
        getattr(pipe, net).eval()
    licence = spec.license if spec.license is not None else card_license(directory)
    return LoadedPipeline(
        name=name, source=source, revision=revision, pipe=pipe, license=licence, turbo=bool(pipe.is_turbo)
    )


def _oom_at_load(name: str, device: Any, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"model {name!r}: out of memory moving the ACE-Step pipeline to {device}: {exc}",
        hint="free the GPU (other processes: nvidia-smi), use dtype bfloat16, or a smaller checkpoint",
    )


def describe(directory: Path) -> dict[str, Any]:
    """What `doctor` shows of a local checkpoint: its components and licence, without loading it."""
    return {
        "components": components(directory),
        "license": card_license(directory),
        "cache": str(hf_cache_dir()),
    }
