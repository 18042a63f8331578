"""install.sh's choices, seen through --dry-run (nothing is installed): the torch build by the
driver's CUDA version (the rule doctor suggests from), the OS packages it would install, and the
constraints file it installs from (complete, within pyproject's ranges, resolvable on aarch64)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from daemon.ops import doctor as doc
from daemon.ops.torchbuild import choose

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "systemd" / "install.sh"
CONSTRAINTS = REPO / "systemd" / "constraints.txt"


def smi_header(cuda: str) -> str:
    return (
        "+-----------------------------------------------------------------------------------------+\n"
        f"| NVIDIA-SMI 580.95.05              Driver Version: 580.95.05      CUDA Version: {cuda}     |\n"
    )


def smi_script(cuda: str) -> str:
    """An nvidia-smi stand-in printing the header of a driver that supports `cuda`."""
    return "cat <<'EOF'\n" + smi_header(cuda) + "EOF"


def fake_bin(tmp_path: Path, **scripts: str) -> Path:
    """A folder of stand-in commands (name -> shell body) to put first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name.replace("_", "-")
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
    return bin_dir


def dry_run(bin_dir: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["sh", str(INSTALL), "--dry-run", "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("cuda", "build"), [(None, "cpu"), ("13.0", "cu130"), ("13.2", "cu130"), ("12.8", "cu128")]
)
def test_torch_auto_follows_the_driver_and_says_why(tmp_path: Path, cuda: str | None, build: str) -> None:
    # No driver: an nvidia-smi that fails, as it does where the kernel module is missing.
    smi = smi_script(cuda) if cuda else "echo 'NVIDIA-SMI has failed' >&2; exit 9"
    proc = dry_run(fake_bin(tmp_path, nvidia_smi=smi))
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "chosen by --torch auto" in x)
    assert f"torch 2.13.0: {build}, chosen by --torch auto: " in line
    assert choose(smi_header(cuda) if cuda else None).why in line  # the rule's own words
    if cuda:
        assert f"supports CUDA {cuda}" in line
    # The torch install names the index of that build (or says it cannot be reached).
    assert f"https://download.pytorch.org/whl/{build}" in proc.stdout + proc.stderr
    assert "-c " + str(CONSTRAINTS) in proc.stdout


def test_an_old_driver_is_refused_with_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    env["PATH"] = f"{fake_bin(tmp_path, nvidia_smi=smi_script('12.4'))}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        ["sh", str(INSTALL), "--python", sys.executable],
        capture_output=True,
        text=True,
        env={**env, "DESTDIR": str(tmp_path / "root")},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "supports only CUDA 12.4" in proc.stderr and "--torch cpu" in proc.stderr
    assert not (tmp_path / "root").exists()  # refused before touching anything


def test_doctor_suggests_the_build_install_sh_chooses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    if torch.version.cuda is not None or torch.cuda.is_available():
        pytest.skip("checks the suggestion made to a CPU-only torch")
    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, nvidia_smi=smi_script('13.0'))}:/usr/bin:/bin")
    check = doc.check_cuda()
    assert check.status == "warn"
    assert "install the cu130 build" in (check.fix or "")
    assert "--index-url https://download.pytorch.org/whl/cu130" in (check.fix or "")
    assert choose(smi_header("13.0")).why in (check.fix or "")


def test_explicit_torch_build_and_bad_values(tmp_path: Path) -> None:
    proc = dry_run(None, "--torch", "cu128")
    assert proc.returncode == 0, proc.stderr
    assert "torch 2.13.0: cu128 (--torch cu128)" in proc.stdout
    bad = dry_run(None, "--torch", "rocm")
    assert bad.returncode == 2 and "--torch must be auto, cpu, cu128 or cu130" in bad.stderr


def test_missing_os_packages_are_listed_before_anything_else(tmp_path: Path) -> None:
    # A box without pkg-config (so without libsystemd-dev either, as far as install.sh can tell).
    proc = dry_run(fake_bin(tmp_path, pkg_config="exit 127", nvidia_smi="exit 9"), "--torch", "cpu")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "OS packages missing: pkg-config libsystemd-dev" in out or "libsystemd-dev" in out, out
    apt = out.index("apt-get install -y -q --no-install-recommends")
    assert "libsystemd-dev" in out[apt : out.index("\n", apt)]
    assert apt < out.index("-m venv") and apt < out.index("pip install")


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
    return pins


def test_constraints_pin_every_runtime_dependency_within_pyproject_ranges() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins()
    for line in project["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is not pinned in {CONSTRAINTS.name}: run scripts/freeze-constraints.py"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(req.specifier))
    assert not [n for n in pins if n.startswith(("nvidia-", "triton"))], "the torch build pins its own"
    # The [test] extra must not force a Triton that a CUDA torch pins differently.
    assert not any("triton" in r for r in project["optional-dependencies"]["test"])


def _pypi_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_constraints_resolve_for_dgx_spark_aarch64_cp312(tmp_path: Path) -> None:
    """Every pin has a wheel for manylinux_2_28_aarch64 / CPython 3.12 (DGX OS on a DGX Spark), or,
    for systemd-python, a source distribution (it is compiled by install.sh's OS packages)."""
    if not _pypi_reachable():
        pytest.skip("pypi.org cannot be reached from here")
    pins = tmp_path / "pins.txt"
    pins.write_text(
        "\n".join(
            x for x in CONSTRAINTS.read_text().splitlines() if x and not x.startswith(("#", "systemd-python"))
        )
    )
    # pip does not widen --platform to the older manylinux tags a 2.28 system also runs: list them.
    platforms = [f"manylinux_2_{m}_aarch64" for m in range(17, 29)] + ["manylinux2014_aarch64"]
    pip = [sys.executable, "-m", "pip"]
    proc = subprocess.run(
        [*pip, "install", "--dry-run", "--quiet", "--ignore-installed", "--only-binary=:all:"]
        + [a for p in platforms for a in ("--platform", p)]
        + ["--python-version", "3.12", "--implementation", "cp", "--target", str(tmp_path / "t")]
        + ["--report", str(tmp_path / "report.json"), "-r", str(pins)],
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    chosen = {
        canonicalize_name(i["metadata"]["name"]): i
        for i in json.loads((tmp_path / "report.json").read_text())["install"]
    }
    for name, version in _pins().items():
        if name == "systemd-python":
            continue
        assert chosen[name]["metadata"]["version"] == version.split(";")[0].strip(), name
        url = chosen[name]["download_info"]["url"]
        assert url.endswith(".whl") and ("aarch64" in url or "-none-any" in url or "py3-none" in url), url
    sdist = subprocess.run(
        [*pip, "download", "--quiet", "--no-deps", "--no-binary=:all:", "--no-build-isolation"]
        + ["-d", str(tmp_path / "sdist"), f"systemd-python=={_pins()['systemd-python']}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sdist.returncode == 0, sdist.stderr[-2000:]
    assert list((tmp_path / "sdist").glob("systemd*python-*.tar.gz"))
