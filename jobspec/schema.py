"""JSON Schema of job files and sidecars, rendered from the models.

`python -m jobspec.schema > jobspec/examples/job.schema.json` regenerates the copy shipped
beside the examples (the repository root links to it; a test fails when it drifts from the models).
`python -m jobspec.schema --result > jobspec/examples/result.schema.json` does the same for the
sidecar contract, which the daemon's real sidecars are checked against in the end-to-end tests: a
change there is a change of the contract users parse (bump SCHEMA_VERSION when it breaks them).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from jobspec.models import BatchFile, JobSpec
from jobspec.sidecar import SCHEMA_VERSION, ErrorSidecar, ResultSidecar

DRAFT = "https://json-schema.org/draft/2020-12/schema"
RESULT_SCHEMA_NAME = "result.schema.json"


def _combined(models: list[type[BaseModel]], title: str, description: str, mode: str) -> dict[str, Any]:
    refs, defs = models_json_schema([(m, mode) for m in models], ref_template="#/$defs/{model}")  # type: ignore[arg-type]
    return {
        "$schema": DRAFT,
        "title": title,
        "description": description,
        "anyOf": [refs[(m, mode)] for m in models],
        **defs,
    }


def job_file_schema() -> dict[str, Any]:
    """Schema of a job file: one job, or a batch (`jobs:` + optional `defaults:`)."""
    return _combined(
        [JobSpec, BatchFile],
        "dgx-music job file",
        "One job (prompt, duration, ...) or a batch (jobs: [...] with optional defaults:). "
        "Drop it into the spool's inbox/.",
        "validation",
    )


def result_schema() -> dict[str, Any]:
    """Schema of the sidecars: `<id>.json` (completed) and `<id>.error.json` (failed or cancelled)."""
    return _combined(
        [ResultSidecar, ErrorSidecar],
        f"dgx-music result sidecar, schema_version {SCHEMA_VERSION}",
        "outbox/<id>.json for a completed job, failed/<id>.error.json for a failed or cancelled one.",
        "serialization",
    )


def render(schema: dict[str, Any]) -> str:
    """The exact text kept in job.schema.json."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    schema = result_schema() if "--result" in args else job_file_schema()
    sys.stdout.write(render(schema))
    return 0


if __name__ == "__main__":
    sys.exit(main())
