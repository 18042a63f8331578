"""The versions dgx-music requires, read from the installed distribution's metadata.

Hints quote these (`pip install 'transformers>=5.0'`), so they always match the pyproject.toml
that built the installed package instead of a copy that drifts.
"""

from __future__ import annotations

import re
from importlib import metadata

DISTRIBUTION = "dgx-music"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*)(?:;\s*(.*))?$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement(package: str) -> str:
    """`transformers>=5.0` as the installed dgx-music declares it; the bare name when the
    distribution metadata is missing (running from a checkout that was never installed)."""
    try:
        lines = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return package
    for line in lines:
        m = _NAME.match(line)
        if m is None or _normalise(m.group(1)) != _normalise(package):
            continue
        if m.group(3) and "extra" in m.group(3):
            continue  # a test/dev extra, not what the daemon needs
        return f"{package}{m.group(2).strip().replace(' ', '')}"
    return package


def version_problem(package: str, installed: str) -> str | None:
    """Why `installed` does not satisfy the requirement, or None (also when it cannot be told)."""
    spec = requirement(package)[len(package) :]
    if not spec:
        return None
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion, Version
    except ImportError:  # packaging comes with transformers; without it, skip the comparison
        return None
    try:
        if Version(installed) in SpecifierSet(spec):
            return None
    except (InvalidSpecifier, InvalidVersion):
        return None
    return f"{package} {installed} is outside what dgx-music requires ({requirement(package)})"
