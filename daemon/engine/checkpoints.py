"""MusicGen checkpoints: resolve one by config name, fetch it into the hub cache, check and load it.

Every checkpoint, hub or local, goes through the same `AutoProcessor.from_pretrained` +
`MusicgenForConditionalGeneration.from_pretrained` path (musicgen-melody ones: the tokenizer and
`MusicgenMelodyForConditionalGeneration`, with the chroma of `daemon.engine.melody`); the made-up
ones of `daemon.ops.tinymodel`
are ordinary `save_pretrained` folders, so tests exercise the production loader. Where the hub
cache is and whether the hub may be reached: `daemon.engine.hub`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.core.config import ModelSpec, Settings
from daemon.core.errors import ModelLoadError, UnknownModelError
from daemon.engine.hub import card_license, hf_cache_dir, hf_offline
from daemon.engine.loadable import loadability, local_checkpoint

__all__ = [
    "LoadedCheckpoint",
    "check_local_dir",
    "fetch",
    "hf_cache_dir",
    "hf_offline",
    "load_checkpoint",
    "local_revision",
    "quiet_transformers",
    "resolve_spec",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model ready for the engine, with what the sidecar records about where it came from."""

    name: str
    source: str  # hub repo id or local path
    revision: str  # commit hash for hub checkpoints, "local:<sha256>" for directories
    model: Any  # MusicgenForConditionalGeneration (or MusicgenMelodyForConditionalGeneration)
    processor: Any  # MusicgenProcessor (or daemon.engine.melody.TextProcessor)
    melody: bool = False  # a musicgen-melody checkpoint: takes `melody` references (chroma)
    license: str | None = None  # the weights' licence (config, else model card); None when unknown


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence progress bars and the token-id range warning that real MusicGen configs also trigger.

    MusicGen's pad/bos id equals the codebook size by design (one slot past the codes).
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------- resolving and loading

# Files a MusicGen snapshot needs; weights come as safetensors, or .bin for repos without them.
_HUB_PATTERNS = ["*.json", "*.safetensors", "spiece.model", "*.txt", "README.md"]
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")


def resolve_spec(name: str, settings: Settings) -> ModelSpec:
    """The configured model called `name`."""
    spec = settings.models.get(name)
    if spec is None:
        raise UnknownModelError(
            f"unknown model {name!r}: this daemon serves {', '.join(sorted(settings.models))}",
            hint="name one of the configured models, or add it under `models:` in the config",
        )
    return spec


def _hub_error(name: str, spec: ModelSpec, exc: Exception, *, offline: bool) -> ModelLoadError:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{spec.id}@{spec.revision}"
    fetch_hint = (
        f"run `dgx-music model fetch {name}` on a machine with network access (same HF_HOME), "
        f"or copy the Hugging Face cache to {hf_cache_dir()}"
    )
    if isinstance(exc, RevisionNotFoundError):
        return ModelLoadError(
            f"model {name!r}: revision {spec.revision!r} does not exist in {spec.id}",
            hint=f"fix models.{name}.revision in the config (a branch, tag or commit hash of {spec.id})",
        )
    if isinstance(exc, GatedRepoError):
        return ModelLoadError(
            f"model {name!r}: {spec.id} is gated and this machine is not authorised",
            hint="accept the model's licence on huggingface.co and set HF_TOKEN for the service",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelLoadError(
            f"model {name!r}: repository {spec.id} does not exist on the hub (or is private)",
            hint=f"fix models.{name}.id in the config",
        )
    if isinstance(exc, LocalEntryNotFoundError) or offline:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        return ModelLoadError(
            f"model {name!r}: {where} is not in the local cache ({hf_cache_dir()}) and {why}",
            hint=fetch_hint,
        )
    return ModelLoadError(f"model {name!r}: cannot download {where}: {exc}", hint=fetch_hint)


def snapshot(
    name: str, spec: ModelSpec, *, local_files_only: bool, patterns: list[str] | None = None
) -> Path:
    """The hub snapshot folder for `spec` (downloaded if allowed); its name is the commit hash.

    `patterns`: the files to fetch (default: a MusicGen checkpoint's)."""
    from huggingface_hub import snapshot_download

    offline = hf_offline()
    kwargs: dict[str, Any] = dict(
        repo_id=str(spec.id),
        revision=spec.revision,
        cache_dir=str(hf_cache_dir()),
        local_files_only=local_files_only or offline,
    )
    try:
        if patterns is not None:
            return Path(snapshot_download(allow_patterns=patterns, **kwargs))
        path = Path(snapshot_download(allow_patterns=_HUB_PATTERNS, **kwargs))
        if not _weight_files(path):
            # Older repos carry only PyTorch pickles.
            path = Path(snapshot_download(allow_patterns=_HUB_PATTERNS + ["pytorch_model*.bin"], **kwargs))
    except Exception as exc:  # huggingface_hub raises many types (HTTP, OS, connection)
        raise _hub_error(name, spec, exc, offline=offline) from exc
    return path


def fetch(name: str, settings: Settings) -> Path:
    """Download model `name` into the hub cache (a local-directory model is only checked)."""
    spec = resolve_spec(name, settings)
    if spec.path is not None:
        check_local_dir(name, Path(spec.path))
        return Path(spec.path)
    if hf_offline():
        raise ModelLoadError(
            f"cannot fetch model {name!r} ({spec.id}): HF_HUB_OFFLINE is set",
            hint="unset HF_HUB_OFFLINE and run again on a machine with network access",
        )
    return snapshot(name, spec, local_files_only=False)


def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for g in _WEIGHT_GLOBS for p in directory.glob(g))


def check_local_dir(name: str, directory: Path) -> dict[str, Any]:
    """A readable, whole MusicGen checkpoint directory, or a ModelLoadError saying what is wrong.

    Returns its config.
    """
    local_checkpoint(name, directory).raise_unless_ok()
    config: dict[str, Any] = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    return config


def local_revision(directory: Path) -> str:
    """A content fingerprint of a local checkpoint: "local:" + sha256 over its config and weights.

    Weights are sampled (size, first and last MiB per file) so multi-GB checkpoints hash in
    milliseconds while any re-initialised or re-trained weights still change the fingerprint.
    """
    h = hashlib.sha256()
    for fname in ("config.json", "generation_config.json", "tokenizer.json"):
        f = directory / fname
        if f.is_file():
            h.update(fname.encode() + b"\0" + f.read_bytes())
    chunk = 1 << 20
    for f in _weight_files(directory):
        size = f.stat().st_size
        h.update(f.name.encode() + b"\0" + str(size).encode())
        with f.open("rb") as fh:
            h.update(fh.read(chunk))
            if size > 2 * chunk:
                fh.seek(size - chunk)
                h.update(fh.read(chunk))
    return "local:" + h.hexdigest()


def load_checkpoint(name: str, settings: Settings, *, device: Any, dtype: Any) -> LoadedCheckpoint:
    """Processor + MusicgenForConditionalGeneration for model `name`, on `device` in `dtype`, in eval mode."""
    import torch

    spec = resolve_spec(name, settings)
    # The check doctor makes too: what fails here makes doctor fail, and the other way round.
    loadability(name, spec).raise_unless_ok()
    if spec.path is not None:
        directory = Path(spec.path).expanduser()
        check_local_dir(name, directory)  # before hashing: a missing directory says so, not an OSError
        revision = local_revision(directory)
        source = str(directory)
    else:
        directory = snapshot(name, spec, local_files_only=False)
        revision = directory.name  # snapshots/<commit hash>
        source = str(spec.id)
    config = check_local_dir(name, directory)
    melody = config.get("model_type") == "musicgen_melody"
    from transformers import AutoProcessor, AutoTokenizer, MusicgenForConditionalGeneration

    try:
        with quiet_transformers():
            if melody:
                from transformers import MusicgenMelodyForConditionalGeneration

                from daemon.engine.melody import ChromaExtractor, ChromaParams, TextProcessor

                processor = TextProcessor(
                    AutoTokenizer.from_pretrained(directory),
                    ChromaExtractor(ChromaParams.from_dir(directory)),
                )
                model_cls: Any = MusicgenMelodyForConditionalGeneration
            else:
                processor = AutoProcessor.from_pretrained(directory)
                model_cls = MusicgenForConditionalGeneration
            model, info = model_cls.from_pretrained(directory, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise _oom_at_load(name, device, exc) from exc
        raise ModelLoadError(
            f"model {name!r}: cannot load the checkpoint in {directory}: {exc}",
            hint="the checkpoint is damaged or from an incompatible version: copy or download it again",
        ) from exc
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise ModelLoadError(
            f"model {name!r}: the checkpoint in {directory} lacks {len(missing)} weight tensors "
            f"(e.g. {', '.join(sorted(missing)[:3])}); they would be random",
            hint="the checkpoint is incomplete: copy or download it again",
        )
    unexpected = list(info.get("unexpected_keys") or [])
    if unexpected:
        log.warning(
            "model %s: %d tensors in %s are not used by MusicGen (e.g. %s)",
            name,
            len(unexpected),
            directory,
            ", ".join(sorted(unexpected)[:3]),
        )
    try:
        model = model.to(device)
    except torch.OutOfMemoryError as exc:
        del model
        _free_accelerator()
        raise _oom_at_load(name, device, exc) from exc
    codec_in_float32(model)
    model.eval()
    licence = spec.license if spec.license is not None else card_license(directory)
    return LoadedCheckpoint(
        name=name,
        source=source,
        revision=revision,
        model=model,
        processor=processor,
        melody=melody,
        license=licence,
    )


def codec_in_float32(model: Any) -> None:
    """EnCodec in float32 whatever the language model's dtype.

    The codec is a small convolutional net run once per clip, so float32 costs next to nothing,
    while half precision audibly degrades its output (audiocraft decodes in float32 too). Codes go
    in as integers, so the LM's dtype never meets the codec's.
    """
    import torch

    model.audio_encoder.to(torch.float32)


def _oom_at_load(name: str, device: Any, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"model {name!r}: out of memory moving the weights to {device}: {exc}",
        hint="free the GPU (other processes: nvidia-smi), use dtype float16/bfloat16, or a smaller model",
    )


def _free_accelerator() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_melody_spec(spec: ModelSpec) -> bool:
    """Whether a configured model is a musicgen-melody one, without loading it: a local directory's
    config.json says so; a hub id is judged by its name (facebook/musicgen-melody, -stereo-melody)."""
    if spec.path is not None:
        try:
            config = json.loads((Path(spec.path).expanduser() / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(config, dict) and config.get("model_type") == "musicgen_melody"
    return "melody" in str(spec.id).lower()


def melody_models(settings: Settings) -> list[str]:
    """Names of the configured models that take a `melody` reference."""
    return sorted(n for n, spec in settings.models.items() if is_melody_spec(spec))
