"""The wheel is the product: what it holds, and the installed artifact running from elsewhere.

The first test builds the wheel and compares it with the source tree (every package directory,
the examples and the schema), so a packaging mistake fails here and not on a user's box. The
others need `scripts/check-installed.sh` (run by `make test`): it installs the wheel with
systemd/install.sh into a DESTDIR and points DGX_MUSIC_INSTALLED_ROOT at it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INSTALLED_ROOT = os.environ.get("DGX_MUSIC_INSTALLED_ROOT", "")
needs_installed = pytest.mark.skipif(
    not INSTALLED_ROOT, reason="needs the installed wheel (scripts/check-installed.sh, run by `make test`)"
)


def source_packages() -> set[str]:
    return {
        str(p.parent.relative_to(REPO))
        for top in ("daemon", "jobspec")
        for p in (REPO / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }


def test_the_wheel_holds_every_package_and_the_shipped_data(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("dgx_music-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    in_wheel = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    missing = source_packages() - in_wheel
    assert not missing, f"package directories missing from the wheel: {sorted(missing)}"
    examples = sorted(p.name for p in (REPO / "jobspec" / "examples").iterdir() if p.is_file())
    assert examples and all(f"jobspec/examples/{e}" in names for e in examples), examples
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "dgx-music = daemon.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    # What it is and under which licence, with the licence text itself.
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta and "Classifier: Operating System :: POSIX :: Linux" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)[-8:]


def _installed_cli() -> Path:
    cli = Path(INSTALLED_ROOT) / "opt/dgx-music/venv/bin/dgx-music"
    assert cli.exists(), f"{cli}: install.sh did not install the console script"
    return cli


@needs_installed
def test_the_installed_package_is_the_wheel_not_the_checkout() -> None:
    py = Path(INSTALLED_ROOT) / "opt/dgx-music/venv/bin/python"
    out = subprocess.run(
        [str(py), "-c", "import daemon, jobspec; print(daemon.__file__); print(jobspec.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tempfile.gettempdir(),
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert line.startswith(INSTALLED_ROOT) and "site-packages" in line, line


@needs_installed
def test_the_installed_config_example_loads() -> None:
    cfg = Path(INSTALLED_ROOT) / "etc/dgx-music/config.yaml"
    out = subprocess.run(
        [str(_installed_cli()), "config", "--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tempfile.gettempdir(),
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["spool"] == "/var/lib/dgx-music"


@needs_installed
def test_the_installed_daemon_reaches_ready_and_completes_a_job(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from reliability.daemonproc import NotifyListener

    cli = _installed_cli()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DGX_MUSIC_", "PYTHON"))}
    env["HF_HUB_OFFLINE"] = "1"
    model = tmp_path / "tiny"
    subprocess.run(
        [str(cli), "model", "init-tiny", str(model)],
        check=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
        capture_output=True,
    )
    spool = tmp_path / "spool"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "spool": str(spool),
                "models": {"tiny": {"path": str(model)}},
                "default_model": "tiny",
                "device": "cpu",
                "settle_s": 0.1,
            }
        )
    )
    listener = NotifyListener(Path(tempfile.mkdtemp(prefix="dgxn")) / "n.sock")
    env["NOTIFY_SOCKET"] = str(listener.path)
    proc = subprocess.Popen(
        [str(cli), "serve", "--config", str(cfg)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while not any(m == "READY=1" for _, line in listener.snapshot() for m in line.splitlines()):
            assert proc.poll() is None and time.monotonic() < deadline, "serve died or never sent READY=1"
            time.sleep(0.1)
        (spool / "inbox" / "first.yaml").write_text(
            "prompt: the installed wheel plays\nduration: 0.5\nseed: 3\n"
        )
        sidecar = spool / "outbox" / "first.json"
        while not sidecar.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "serve died before the job completed"
            time.sleep(0.1)
        result = json.loads(sidecar.read_text())
        assert result["status"] == "completed" and (spool / "outbox" / result["outputs"][0]["path"]).exists()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
        listener.close()
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]


def _fake_root_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH as root on Debian without chromium or ffmpeg, where apt-get only notes its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    for tool in ("bash", "dirname", "uname", "pkg-config", "cat"):
        found = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True)
        if found.returncode:
            pytest.skip(f"{tool} is not installed")
        (bin_dir / tool).symlink_to(found.stdout.strip())
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    for script in ("id", "apt-get"):
        (bin_dir / script).chmod(0o755)
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".dgx-music-installed").touch()  # newer than pyproject.toml: nothing to pip install
    os.utime(venv / ".dgx-music-installed", (time.time() + 60, time.time() + 60))
    return {"PATH": str(bin_dir), "VENV": str(venv), "HOME": str(tmp_path)}, calls


def test_the_demos_install_leaves_the_test_tools_to_the_tests(tmp_path: Path) -> None:
    """`make demo` runs bootstrap.sh only: as root it must not apt-get chromium or ffmpeg, which
    only the tests use (nor Slurm, munge, debootstrap); `make test` runs test-tools.sh, which does."""
    if not subprocess.run(["pkg-config", "--exists", "libsystemd"]).returncode == 0:
        pytest.skip("libsystemd-dev is missing: bootstrap.sh would install it first")
    env, calls = _fake_root_path(tmp_path)
    boot = subprocess.run([str(REPO / "scripts/bootstrap.sh")], env=env, capture_output=True, text=True)
    assert boot.returncode == 0, boot.stderr
    # (It may install what the product itself runs, e.g. rubberband for loops: never the test tools.)
    installed = calls.read_text() if calls.exists() else ""
    assert "chromium" not in installed and "ffmpeg" not in installed, installed
    demo = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "test-tools" not in demo.stdout and "bootstrap.sh" in demo.stdout
    tools = subprocess.run([str(REPO / "scripts/test-tools.sh")], env=env, capture_output=True, text=True)
    assert tools.returncode == 0, tools.stderr
    assert "install -y -qq --no-install-recommends chromium ffmpeg" in calls.read_text()
    make_test = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "./scripts/test-tools.sh" in make_test.stdout
