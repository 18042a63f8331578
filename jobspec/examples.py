"""The example job files and the job JSON Schema, shipped inside the package.

They are package data (`jobspec/examples/`), so an installed wheel has them wherever it runs:
`dgx-music examples DIR` copies them, `dgx-music demo` submits them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from jobspec.names import JOB_SUFFIXES

SCHEMA_NAME = "job.schema.json"


@contextmanager
def examples_dir() -> Iterator[Path]:
    """The shipped examples as a real directory (a temporary copy if the package is zipped)."""
    with resources.as_file(resources.files("jobspec") / "examples") as path:
        yield Path(path)


def example_names() -> list[str]:
    folder = resources.files("jobspec") / "examples"
    return sorted(e.name for e in folder.iterdir() if e.name.lower().endswith(JOB_SUFFIXES))


def copy_examples(target: Path, *, overwrite: bool = False) -> list[Path]:
    """Copy every example and job.schema.json into `target` (created); never replaces a file
    unless `overwrite`. Returns the files written; raises FileExistsError naming the first clash."""
    target.mkdir(parents=True, exist_ok=True)
    names = [*example_names(), SCHEMA_NAME]
    if not overwrite:
        for name in names:
            if (target / name).exists():
                raise FileExistsError(f"{target / name} exists (use --force to replace it)")
    written = []
    with examples_dir() as src:
        for name in names:
            shutil.copyfile(src / name, target / name)
            written.append(target / name)
    return written
