"""Write systemd/constraints.txt: the versions of dgx-music's runtime dependencies (and theirs)
installed in the venv the test suite ran in, as pip constraints for systemd/install.sh.

    .venv/bin/python scripts/freeze-constraints.py        # after `make test` passed

Only what dgx-music needs at run time is pinned (the [test] extra is not), with the markers of
this platform evaluated. torch's own CUDA packages (nvidia-*, triton) are not pinned: the torch
build install.sh chooses pins them. A package whose tested release needs a newer Python than
dgx-music supports is pinned only for the Pythons that release runs on; older ones resolve within
pyproject.toml's ranges.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "systemd" / "constraints.txt"
PROJECT = "dgx-music"
LOWEST_PYTHON = "3.10"  # pyproject.toml's requires-python
# Brought by the torch build install.sh picks (CPU builds have none of them).
TORCH_BRINGS = ("nvidia-", "triton", "cuda-")

HEADER = """\
# The versions dgx-music's test suite ran against: systemd/install.sh installs the service venv
# with `pip install -c` this file. Regenerate it from the venv the suite passed in:
#     .venv/bin/python scripts/freeze-constraints.py
# Written by that script; do not edit by hand.
"""


def closure(project: str) -> dict[str, metadata.Distribution]:
    """The installed distributions `project` needs at run time, by canonical name."""
    env = dict(default_environment())
    env["extra"] = ""
    seen: dict[str, metadata.Distribution] = {}
    todo = [project]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a marker excluded it from this venv
        seen[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    return seen


def pin(name: str, dist: metadata.Distribution) -> str:
    # Without the local label (torch's +cpu): the pin admits every build of that release.
    line = f"{name}=={dist.version.split('+')[0]}"
    requires_python = dist.metadata.get("Requires-Python")
    if requires_python and not SpecifierSet(requires_python).contains(LOWEST_PYTHON + ".0"):
        # e.g. numpy 2.3 needs Python 3.11: Ubuntu 22.04's 3.10 takes the newest release that runs.
        line += f'; python_version >= "{_lowest_accepted(SpecifierSet(requires_python))}"'
    return line


def _lowest_accepted(spec: SpecifierSet) -> str:
    for minor in range(10, 30):
        if spec.contains(f"3.{minor}.0"):
            return f"3.{minor}"
    raise SystemExit(f"no Python 3 release satisfies {spec}")


def main() -> int:
    deps = closure(PROJECT)
    deps.pop(canonicalize_name(PROJECT), None)
    if not deps:
        print(
            f"{PROJECT} is not installed in {sys.prefix}: run ./scripts/bootstrap.sh first", file=sys.stderr
        )
        return 1
    lines = [pin(n, d) for n, d in sorted(deps.items()) if not n.startswith(TORCH_BRINGS)]
    OUT.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(lines)} pins", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
