"""Where the Hugging Face hub cache is and whether the hub may be reached, read at call time.

huggingface_hub reads HF_HUB_CACHE / HF_HOME / HF_HUB_OFFLINE once, at import; the daemon may be
configured after start-up (a reloaded config, doctor run with another environment), so these
follow the same rules but read the environment whenever they are called. `card_license` reads
the weights' licence from a checkpoint's model card, whichever family it is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from daemon.core.families import hf_cache_dir

__all__ = ["card_license", "hf_cache_dir", "hf_offline"]

_TRUTHY = ("1", "true", "yes", "on")


def hf_offline() -> bool:
    """HF_HUB_OFFLINE read now, not at import (the daemon may be configured after start-up)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


def card_license(directory: Path) -> str | None:
    """The `license` of the model card's metadata (README.md front matter), None when absent."""
    try:
        text = (directory / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    match = _FRONT_MATTER.match(text)
    if match is None:
        return None
    import yaml

    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    if value is None:
        return None
    if value == "other" and isinstance(meta.get("license_name"), str):
        return str(meta["license_name"])
    return str(value)
