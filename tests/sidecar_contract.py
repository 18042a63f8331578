"""The committed sidecar contract (jobspec/examples/result.schema.json) applied to real sidecars.

Not the schema the models generate at run time: the file users were given. A daemon that writes a
sidecar the file does not describe fails here even when its own models accept it.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "jobspec" / "examples" / "result.schema.json"


@cache
def _validators() -> dict[str, Any]:
    import jsonschema

    schema = json.loads(COMMITTED.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return {
        kind: jsonschema.Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": schema["$defs"]})
        for kind in ("ResultSidecar", "ErrorSidecar")
    }


def sidecars(root: Path) -> list[tuple[Path, str]]:
    """Every sidecar under `root`'s spools: outbox/**/<id>.json (results) and failed/**/<id>.error.json."""
    found: list[tuple[Path, str]] = []
    for kind, folder, pattern in (
        ("ResultSidecar", "outbox", "*.json"),
        ("ErrorSidecar", "failed", "*.error.json"),
    ):
        for top in root.rglob(folder):
            if not top.is_dir() or not (top.parent / "inbox").is_dir():
                continue  # not a spool's folder
            found.extend((p, kind) for p in top.rglob(pattern) if not p.name.startswith(".") and p.is_file())
    return found


def check_sidecars(root: Path) -> int:
    """Validate every sidecar under `root` against the committed schema; returns how many."""
    validators = _validators()
    problems = []
    found = sidecars(root)
    for path, kind in found:
        try:
            body = json.loads(path.read_bytes())
        except ValueError as exc:
            problems.append(f"{path}: not JSON: {exc}")
            continue
        for err in validators[kind].iter_errors(body):
            where = "/".join(str(p) for p in err.absolute_path) or "(top)"
            problems.append(f"{path.relative_to(root)}: {where}: {err.message[:300]}")
    assert not problems, "sidecars outside the committed result.schema.json:\n" + "\n".join(problems[:20])
    return len(found)
