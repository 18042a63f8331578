"""The dgx loop on the oldest transformers pyproject.toml allows (5.17: layers take `past_key_values=`).

A venv is built on top of this one's packages with only transformers replaced (pip, from the
registry), and the greedy parity tests run there as a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OLDEST = "5.17.*"
PARITY = "greedy_matches_transformers_generate or prompt_continuation or static_bucket_path_equals_eager"


@pytest.mark.slow  # a pip install and the parity tests: one to three minutes
def test_greedy_parity_holds_on_the_oldest_supported_transformers(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # This venv's packages (torch, pytest, ...) stay visible behind the new venv's own.
    Path(site, "zz_parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"transformers=={OLDEST}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if pip.returncode != 0:
        text = pip.stderr + pip.stdout
        if any(
            s in text
            for s in (
                "No matching distribution",
                "Could not find a version",
                "Network is unreachable",
                "Failed to establish",
                "Temporary failure in name resolution",
            )
        ):
            pytest.skip(f"the package registry cannot provide transformers=={OLDEST}: {text.strip()[-300:]}")
        raise AssertionError(f"pip failed: {text[-2000:]}")
    version = subprocess.run(
        [str(python), "-c", "import transformers; print(transformers.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version.startswith("5.17."), version
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/engine/test_fastdecode.py",
            "-k",
            PARITY,
            "tests/engine/test_versions.py",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
