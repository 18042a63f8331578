"""The README documents what the code does: its tables are rendered from the models."""

from __future__ import annotations

import re
from pathlib import Path

from daemon.cli import COMMAND_MODULES
from daemon.core.config import config_table_markdown
from jobspec.docs import job_table_markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_job_table_matches_the_models() -> None:
    assert job_table_markdown() in README, (
        "regenerate the job table: python -c 'from jobspec.docs import job_table_markdown as t; print(t())'"
    )


def test_config_table_matches_the_settings() -> None:
    assert config_table_markdown() in README, (
        "regenerate: python -c 'from daemon.core.config import config_table_markdown as t; print(t())'"
    )


def test_readme_opens_with_the_two_setup_commands_and_ci_runs_the_second() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M)


def test_every_command_is_documented() -> None:
    for name in COMMAND_MODULES:
        assert f"dgx-music {name}" in README, f"README lacks `dgx-music {name}`"


def test_service_section_is_the_installed_doc() -> None:
    # install.sh ships docs/service.md as the unit's Documentation=; the README must say the same.
    assert (ROOT / "docs" / "service.md").read_text(encoding="utf-8").strip() in README


def test_every_example_is_named_in_the_readme() -> None:
    examples = sorted(p.name for p in (ROOT / "examples").iterdir() if p.suffix in (".yaml", ".yml"))
    assert examples
    missing = [name for name in examples if f"(examples/{name})" not in README]
    assert not missing, f"README's examples table lacks {missing}"
