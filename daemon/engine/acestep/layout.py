"""The layout of an ACE-Step 1.5 checkpoint folder, checked without loading anything.

A diffusers pipeline folder: model_index.json naming `AceStepPipeline` and one subfolder per
component, each network with a config and weights, and the tokenizer. Read by the loader
(`checkpoint`) and by the load check `serve` and `doctor` make (`daemon.engine.loadable`); it imports
nothing of either, so neither depends on the other through it.
"""

from __future__ import annotations

import json
from pathlib import Path

from daemon.core.errors import ModelLoadError

PIPELINE_CLASS = "AceStepPipeline"
# The networks of a pipeline, each a subfolder with a config and weights.
NETWORKS = ("transformer", "condition_encoder", "text_encoder", "vae")


def components(directory: Path) -> dict[str, str]:
    """Component name -> class name, from the checkpoint's model_index.json (empty when unreadable)."""
    try:
        index = json.loads((directory / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(index, dict):
        return {}
    return {
        k: str(v[1])
        for k, v in index.items()
        if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[1] is not None
    }


def check_local_dir(name: str, directory: Path) -> dict[str, str]:
    """A readable ACE-Step pipeline directory, or a ModelLoadError saying what is wrong.

    Returns its components (name -> class)."""
    made_by = (
        f"make one with `dgx-music model init-tiny DIR --family ace-step` or point models.{name}.path "
        "at an ACE-Step 1.5 diffusers checkpoint"
    )
    if not directory.is_dir():
        raise ModelLoadError(f"model {name!r}: directory {directory} does not exist", hint=made_by)
    index_path = directory / "model_index.json"
    if not index_path.is_file():
        raise ModelLoadError(
            f"model {name!r}: {directory} has no model_index.json (not a diffusers pipeline)", hint=made_by
        )
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"model {name!r}: {index_path} is unreadable or not valid JSON: {exc}",
            hint="the checkpoint is damaged: copy or download it again",
        ) from exc
    kind = index.get("_class_name") if isinstance(index, dict) else None
    if kind != PIPELINE_CLASS:
        raise ModelLoadError(
            f"model {name!r}: {directory} holds a {kind!r} pipeline, not an ACE-Step one ({PIPELINE_CLASS})",
            hint=f"remove `family: ace-step` from models.{name} or point it at an ACE-Step checkpoint",
        )
    parts = components(directory)
    for net in NETWORKS:
        sub = directory / net
        if net not in parts or not (sub / "config.json").is_file():
            raise ModelLoadError(
                f"model {name!r}: {directory} lacks its {net} (no {net}/config.json)",
                hint="the checkpoint is incomplete: copy or download it again",
            )
        if not any(sub.glob("*.safetensors")) and not any(sub.glob("*.bin")):
            raise ModelLoadError(
                f"model {name!r}: {directory}/{net} has no weights (*.safetensors)",
                hint="the checkpoint is incomplete: copy or download it again",
            )
    if not (directory / "tokenizer").is_dir():
        raise ModelLoadError(
            f"model {name!r}: {directory} has no tokenizer/ folder",
            hint="the checkpoint is incomplete: copy or download it again",
        )
    return parts
