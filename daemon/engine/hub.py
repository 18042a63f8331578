"""Where the Hugging Face hub cache is and whether the hub may be reached, read at call time.

huggingface_hub reads HF_HUB_CACHE / HF_HOME / HF_HUB_OFFLINE once, at import; the daemon may be
configured after start-up (a reloaded config, doctor run with another environment), so these
follow the same rules but read the environment whenever they are called.
"""

from __future__ import annotations

import os
from pathlib import Path

_TRUTHY = ("1", "true", "yes", "on")


def hf_offline() -> bool:
    """HF_HUB_OFFLINE read now, not at import (the daemon may be configured after start-up)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


def hf_cache_dir() -> Path:
    """The hub cache as HF_HUB_CACHE / HF_HOME say at call time (huggingface_hub reads them at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"
