"""The README's job-format table, rendered from the model field descriptions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from jobspec.models import BatchFile, JobSpec, Output, Sampling, Section
from jobspec.music import Loop


def _default(info: Any) -> str:
    if info.default_factory is not None:
        return "see below"
    if info.default is PydanticUndefined:
        return "required"
    value = info.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value)


def _rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        description = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_default(info)} | {description} |")
    return rows


def job_table_markdown() -> str:
    """A Markdown table of every job-file key: name, default, description (with its range)."""
    lines = ["| Key | Default | Meaning |", "| --- | --- | --- |"]
    prompt_row = ("| `prompt` | required |", "| `prompt` | required (or `sections`) |")
    lines += [r.replace(*prompt_row) for r in _rows(JobSpec)]
    lines += _rows(Section, "sections[].")
    lines += _rows(Sampling, "sampling.")
    lines += _rows(Output, "output.")
    lines += _rows(Loop, "loop.")
    lines += [r.replace("| required |", "| required in a batch |") for r in _rows(BatchFile)]
    return "\n".join(lines) + "\n"
