"""The code keeps the shape docs/design.md gives it, checked from the code itself."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(
        p for top in ("daemon", "jobspec") for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts
    )


def test_no_module_is_over_450_lines() -> None:
    long = {
        str(p.relative_to(REPO)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def _decode_path() -> list[Path]:
    """The MusicGen decode path: daemon/engine/ less the checkpoint loaders and other families."""
    engine = REPO / "daemon" / "engine"
    skip = {engine / "checkpoints.py", engine / "melody.py"}
    return [p for p in engine.rglob("*.py") if p not in skip and "acestep" not in p.parts]


def test_the_decode_path_keeps_small_modules_and_functions() -> None:
    """At most 350 lines a module and 60 a function, so one loop stays readable."""
    import ast

    long_modules = {
        str(p.relative_to(REPO)): n for p in _decode_path() if (n := len(p.read_text().splitlines())) > 350
    }
    long_functions = {}
    for path in _decode_path():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions[f"{path.relative_to(REPO)}:{node.name}"] = length
    assert not long_modules and not long_functions, (long_modules, long_functions)


def test_every_stage_package_is_in_the_layers_contract() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    layers = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    stages = {f"daemon.{p.name}" for p in (REPO / "daemon").iterdir() if (p / "__init__.py").exists()}
    assert len(stages) >= 5 and stages <= named, stages - named


def test_lint_imports_keeps_every_contract() -> None:
    exe = BIN / "lint-imports"
    if not exe.exists():
        pytest.fail("lint-imports is missing: install the test extra (import-linter)")
    proc = subprocess.run([str(exe)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "0 broken" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_ruff_is_clean() -> None:
    exe = BIN / "ruff" if (BIN / "ruff").exists() else shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is missing: install the test extra")
    proc = subprocess.run(
        [str(exe), "check", "daemon", "jobspec", "tests", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_code_and_docs_cite_only_files_in_the_repository() -> None:
    cited = re.compile(
        r"\b((?:docs|systemd|contrib|benchmarks|scripts)/[\w./@-]+\.(?:md|sh|py|service|yaml|sbatch)|[A-Z]+\.md)\b"
    )
    texts = [*_modules(), *(REPO / "docs").glob("*.md"), REPO / "README.md"]
    missing = set()
    for path in texts:
        for ref in cited.findall(path.read_text()):
            if not (REPO / ref).exists() and not (path.parent / ref).exists():
                missing.add(f"{path.relative_to(REPO)}: {ref}")
    assert not missing, sorted(missing)


@pytest.mark.parametrize("package", ["daemon", "jobspec"])
def test_no_import_cycle(package: str) -> None:
    """grimp reads the source, so lazy imports and imports under TYPE_CHECKING count too."""
    grimp = pytest.importorskip("grimp")  # installed with import-linter
    graph = grimp.build_graph(package, include_external_packages=False, cache_dir=None)
    cycles = set()
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                cycles.add(" -> ".join([module, *chain]))
    assert not cycles, sorted(cycles)
