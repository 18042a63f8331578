"""Which family a configured model belongs to, and which job keys each family honours.

Read without loading anything (a local checkpoint's model_index.json or config.json, or the
`family` the config gives), so the admission of a job can refuse a key its model's family cannot
honour and name the configured models that can. The engine's families (`daemon.engine.family`)
implement what is promised here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from daemon.core.config import ModelSpec, Settings

MUSICGEN = "musicgen"
ACE_STEP = "ace-step"
FAMILIES = (MUSICGEN, ACE_STEP)

# Job keys only one family can honour (every other key is common to all).
FAMILY_KEYS: dict[str, frozenset[str]] = {
    MUSICGEN: frozenset({"sections", "continue_from", "melody", "sampling"}),
    ACE_STEP: frozenset(
        {
            "lyrics",
            "language",
            "steps",
            "guidance",
            "repaint",
            "cover",
            "extract",
            "lego",
            "complete",
            "adapter",
            "adapter_scale",
        }
    ),
}

# Longest song a family makes by default (MusicGen continues window by window up to max_duration).
FAMILY_MAX_DURATION: dict[str, float] = {ACE_STEP: 600.0}

# Native output of each family, for messages before a model is loaded.
FAMILY_SAMPLE_RATE: dict[str, int] = {MUSICGEN: 32000, ACE_STEP: 48000}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def directory_family(directory: Path) -> str | None:
    """The family of the checkpoint in `directory` (None when it holds neither kind)."""
    index = _read_json(directory / "model_index.json")
    if isinstance(index, dict) and index.get("_class_name") == "AceStepPipeline":
        return ACE_STEP
    config = _read_json(directory / "config.json")
    if isinstance(config, dict) and str(config.get("model_type", "")).startswith("musicgen"):
        return MUSICGEN
    return None


def hf_cache_dir() -> Path:
    """The hub cache as HF_HUB_CACHE / HF_HOME say at call time (huggingface_hub reads them at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


def cached_snapshot(spec: ModelSpec) -> Path | None:
    """The hub cache's snapshot folder of `spec`'s revision (a commit hash, or a branch/tag that
    refs/ resolves), or None when that revision was never fetched."""
    repo_dir = hf_cache_dir() / ("models--" + str(spec.id).replace("/", "--"))
    revision = spec.revision
    snapshot = repo_dir / "snapshots" / revision
    if snapshot.is_dir():
        return snapshot
    ref = repo_dir / "refs" / revision
    try:
        commit = ref.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    snapshot = repo_dir / "snapshots" / commit
    return snapshot if commit and snapshot.is_dir() else None


def checkpoint_directory(spec: ModelSpec) -> Path | None:
    """Where a configured model's files are: its local path, or its hub snapshot once fetched."""
    return Path(spec.path).expanduser() if spec.path is not None else cached_snapshot(spec)


def spec_family(spec: ModelSpec) -> str:
    """The family of a configured model: as configured, else as its local checkpoint says, else
    judged by a hub id's name (ACE-Step repos are named ace-step / acestep), else MusicGen."""
    if spec.family is not None:
        return spec.family
    if spec.path is not None:
        return directory_family(Path(spec.path).expanduser()) or MUSICGEN
    name = str(spec.id).lower().replace("-", "").replace("_", "")
    return ACE_STEP if "acestep" in name else MUSICGEN


def models_of(settings: Settings, family: str) -> list[str]:
    """Names of the configured models of `family`, sorted."""
    return sorted(n for n, spec in settings.models.items() if spec_family(spec) == family)


def foreign_keys(keys: set[str], family: str) -> list[str]:
    """The job keys among `keys` that `family` cannot honour, sorted."""
    return sorted(k for k in keys for f, own in FAMILY_KEYS.items() if f != family and k in own)


def family_of_key(key: str) -> str | None:
    for family, own in FAMILY_KEYS.items():
        if key in own:
            return family
    return None


def job_refusal(keys: set[str], duration: float, model: str, settings: Settings) -> tuple[str, str] | None:
    """(message, hint) when model `model` cannot run a job that sets `keys` (the job's keys as
    written) for `duration` seconds; None when it can. The hint names the configured models that can."""
    spec = settings.models.get(model)
    if spec is None:
        return None  # unknown models have their own refusal
    family = spec_family(spec)
    foreign = foreign_keys(keys, family)
    if foreign:
        owner = family_of_key(foreign[0]) or ""
        able = models_of(settings, owner)
        named = ", ".join(repr(k) for k in foreign)
        hint = (
            f"name a model that takes it (`model: {able[0]}`; configured {owner} models: {', '.join(able)}) "
            f"or remove {named}"
            if able
            else f"this daemon has no {owner} model: remove {named}, or add one under `models:` in the config"
        )
        return f"model {model!r} is of the {family} family and cannot honour {named} ({owner} only)", hint
    limit = FAMILY_MAX_DURATION.get(family)
    if limit is not None and duration > limit:
        return (
            f"duration {duration:g} s is longer than {family} models make ({limit:g} s at most)",
            f"ask for at most {limit:g} seconds, or split the piece into several jobs",
        )
    return None
