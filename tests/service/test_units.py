"""systemd units, sysusers/tmpfiles, the sample config and install.sh/uninstall.sh."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon.core.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNITS = ["dgx-music.service", "dgx-music@.service"]
DEFAULT_EXEC = "/opt/dgx-music/venv/bin/dgx-music"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
# Keys newer than some supported systemd versions; older ones warn and ignore them.
NEWER_KEYS = {"RestartSteps": 254, "RestartMaxDelaySec": 254}


def systemd_version() -> int:
    out = subprocess.run([ANALYZE or "systemd-analyze", "--version"], capture_output=True, text=True).stdout
    m = re.match(r"systemd (\d+)", out)
    return int(m.group(1)) if m else 0


def unit_settings(text: str, section: str = "Service") -> list[tuple[str, str]]:
    """(key, value) pairs of one section, in order (repeated keys kept)."""
    out: list[tuple[str, str]] = []
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current == section:
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


def staged_unit(tmp_path: Path, unit: str, as_name: str | None = None) -> Path:
    """The unit with ExecStart pointing at an executable that exists, so verify checks the rest."""
    exe = tmp_path / "bin" / "dgx-music"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    text = (SYSTEMD / unit).read_text().replace(DEFAULT_EXEC, str(exe))
    dest = tmp_path / (as_name or unit)
    dest.write_text(text)
    return dest


# ---- unit contents -------------------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS)
def test_unit_core_settings(unit: str) -> None:
    text = (SYSTEMD / unit).read_text()
    s = dict(unit_settings(text))
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert s["ExecStart"] == f"{DEFAULT_EXEC} serve --config /etc/dgx-music/config.yaml"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["Restart"] == "on-failure"
    assert s["User"] == "dgx-music" and s["Group"] == "dgx-music"
    assert s["StateDirectory"] == "dgx-music" and s["CacheDirectory"] == "dgx-music"
    assert s["ConfigurationDirectory"] == "dgx-music"
    env = [v for k, v in unit_settings(text) if k == "Environment"]
    assert "HF_HOME=/var/cache/dgx-music/huggingface" in env
    defaults = Settings(models={"small": {"id": "facebook/musicgen-small"}})
    # The stop timeout must outlast the daemon's grace period, or systemd kills a job
    # that was allowed to finish.
    assert int(s["TimeoutStopSec"].rstrip("s")) > defaults.stop_grace_s + 10
    assert s["TimeoutStartSec"] == "15min"
    assert int(s["WatchdogSec"].rstrip("s")) >= 60
    assert int(s["MemoryMax"].rstrip("G")) >= defaults.max_memory_gb
    for key, want in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("DevicePolicy", "closed"),
        ("PrivateNetwork", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX"),
        ("UMask", "0027"),
    ]:
        assert s[key] == want, key
    assert ("SystemCallFilter", "@system-service") in unit_settings(text)
    assert any(k == "DeviceAllow" and v.startswith("char-nvidia") for k, v in unit_settings(text))


def test_template_is_the_service_plus_per_gpu_lines() -> None:
    service = unit_settings((SYSTEMD / "dgx-music.service").read_text())
    template_text = (SYSTEMD / "dgx-music@.service").read_text()
    template = unit_settings(template_text)
    per_gpu_start_pre = ("ExecStartPre", "-+/usr/bin/nvidia-modprobe -u -c %i")
    expected = [per_gpu_start_pre if k == "ExecStartPre" else (k, v) for k, v in service]
    assert [kv for kv in template if kv != ("Environment", "DGX_MUSIC_DEVICE=cuda:%i")] == expected
    assert ("Environment", "DGX_MUSIC_DEVICE=cuda:%i") in template
    assert ("Conflicts", "dgx-music.service") in unit_settings(template_text, "Unit")


def test_per_gpu_device_variable_is_read_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DGX_MUSIC_DEVICE", "cuda:3")
    assert load_settings(SYSTEMD / "config.example.yaml").device == "cuda:3"


# ---- systemd-analyze ---------------------------------------------------------------


def run_verify(tmp_path: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ANALYZE or "systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def verify_complaints(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """Every line verify printed, except the documented ones for backoff keys that the
    installed systemd predates. (verify exits 0 on bad values: the output is what counts.)"""
    version = systemd_version()
    complaints = []
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.search(r"Unknown key '?(\w+)'?", line)
        if m and m.group(1) in NEWER_KEYS and version < NEWER_KEYS[m.group(1)]:
            continue
        complaints.append(line)
    return complaints


@needs_analyze
@pytest.mark.parametrize(
    "unit, as_name", [("dgx-music.service", None), ("dgx-music@.service", "dgx-music@0.service")]
)
def test_systemd_analyze_verify(tmp_path: Path, unit: str, as_name: str | None) -> None:
    staged_unit(tmp_path, "dgx-music.service")  # the template's Conflicts= names it
    path = staged_unit(tmp_path, unit, as_name)
    proc = run_verify(tmp_path, path)
    complaints = verify_complaints(proc)
    assert proc.returncode == 0 and not complaints, "\n".join(complaints)


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The verify test above can fail: a typo in a key is reported."""
    path = staged_unit(tmp_path, "dgx-music.service")
    path.write_text(path.read_text().replace("NoNewPrivileges=yes", "NoNewPrivileges=maybe"))
    complaints = verify_complaints(run_verify(tmp_path, path))
    assert any("maybe" in line for line in complaints), complaints


def exposure(tmp_path: Path, path: Path) -> float:
    proc = subprocess.run(
        [ANALYZE or "systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    if "--offline" in proc.stderr and ("unrecognized" in proc.stderr or "Unknown" in proc.stderr):
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr
    return float(m.group(1))


@needs_analyze
@pytest.mark.parametrize(
    "unit, as_name", [("dgx-music.service", None), ("dgx-music@.service", "dgx-music@1.service")]
)
def test_security_exposure_is_ok(tmp_path: Path, unit: str, as_name: str | None) -> None:
    path = staged_unit(tmp_path, unit, as_name)
    score = exposure(tmp_path, path)
    assert score <= 1.5, f"{unit}: exposure {score} (target <= 1.5, OK)"
    # Sanity: the same unit stripped of its sandbox scores far worse, so the parse is real.
    bare = tmp_path / "bare.service"
    bare.write_text(f"[Service]\nExecStart={tmp_path / 'bin' / 'dgx-music'}\n")
    assert exposure(tmp_path, bare) > 5.0


# ---- sysusers / tmpfiles -----------------------------------------------------------


EXPECTED_TMPFILES = {
    "/var/lib/dgx-music": ("0751", "dgx-music", "dgx-music"),
    "/var/lib/dgx-music/inbox": ("2770", "dgx-music", "dgx-music-submit"),
    "/var/lib/dgx-music/outbox": ("2750", "dgx-music", "dgx-music-submit"),
    "/var/lib/dgx-music/failed": ("2750", "dgx-music", "dgx-music-submit"),
    "/var/lib/dgx-music/library": ("2770", "dgx-music", "dgx-music-submit"),
    "/var/lib/dgx-music/work": ("0700", "dgx-music", "dgx-music"),
    "/var/lib/dgx-music/state": ("2750", "dgx-music", "dgx-music-submit"),
    "/var/lib/dgx-music/state/cancel": ("2770", "dgx-music", "dgx-music-submit"),
}


def tmpfiles_entries() -> dict[str, tuple[str, str, str]]:
    out = {}
    for line in (SYSTEMD / "dgx-music.tmpfiles").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            typ, path, mode, user, group, _age = line.split()
            assert typ == "d"
            out[path] = (mode, user, group)
    return out


def test_tmpfiles_modes() -> None:
    entries = tmpfiles_entries()
    for path, want in EXPECTED_TMPFILES.items():
        assert entries[path] == want, path
    # The spool root mode must agree with the unit, or systemd and tmpfiles fight over it.
    s = dict(unit_settings((SYSTEMD / "dgx-music.service").read_text()))
    assert s["StateDirectoryMode"] == entries["/var/lib/dgx-music"][0]


def test_sysusers_lines() -> None:
    lines = [
        line.split(None, 2)
        for line in (SYSTEMD / "dgx-music.sysusers").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ["u", "dgx-music", '- "dgx-music daemon" /var/lib/dgx-music'] in lines
    assert ["g", "dgx-music-submit", "-"] in lines
    assert ["m", "dgx-music", "dgx-music-submit"] in lines
    assert ["m", "dgx-music", "video"] in lines


@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles")),
    reason="needs root and systemd-sysusers/systemd-tmpfiles",
)
def test_sysusers_and_tmpfiles_applied_to_a_scratch_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(SYSTEMD / "dgx-music.sysusers")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    users = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines()}
    groups = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/group").read_text().splitlines()}
    assert users["dgx-music"][5] == "/var/lib/dgx-music"
    assert "dgx-music" in groups["dgx-music-submit"][3].split(",")
    assert "dgx-music" in groups["video"][3].split(",")
    subprocess.run(
        ["systemd-tmpfiles", "--create", f"--root={root}", str(SYSTEMD / "dgx-music.tmpfiles")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    uid = {name: int(fields[2]) for name, fields in users.items()}
    gid = {name: int(fields[2]) for name, fields in groups.items()}
    for path, (mode, user, group) in EXPECTED_TMPFILES.items():
        st = (root / path.lstrip("/")).stat()
        assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == (
            oct(int(mode, 8)),
            uid[user],
            gid[group],
        ), path


# ---- sample config -----------------------------------------------------------------


def test_config_example_loads_and_names_every_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("DGX_MUSIC_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env
    import yaml

    data = yaml.safe_load((SYSTEMD / "config.example.yaml").read_text())
    assert set(data) == set(Settings.model_fields)
    settings = load_settings(SYSTEMD / "config.example.yaml")
    assert settings.spool == Path("/var/lib/dgx-music")
    assert settings.default_model in settings.models
    assert "fault_injection" not in type(settings).model_fields  # test hooks are not configuration


# ---- install.sh / uninstall.sh -----------------------------------------------------


def sh(script: str, *args: str, destdir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    if destdir is not None:
        env["DESTDIR"] = str(destdir)
    return subprocess.run(
        ["sh", str(SYSTEMD / script), *args], capture_output=True, text=True, env=env, timeout=60
    )


def tree(root: Path) -> dict[str, tuple[str, str]]:
    return {
        str(p.relative_to(root)): (oct(p.stat().st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_install_dry_run_changes_nothing(tmp_path: Path) -> None:
    proc = sh("install.sh", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    for expected in [
        "-m venv /opt/dgx-music/venv",
        "pip install",
        "/etc/systemd/system/dgx-music.service",
        "/etc/systemd/system/dgx-music@.service",
        "/etc/sysusers.d/dgx-music.conf",
        "/etc/tmpfiles.d/dgx-music.conf",
        "systemd-sysusers",
        "systemd-tmpfiles --create",
    ]:
        assert expected in proc.stdout, expected
    # Where systemd is not PID 1 (a chroot, a container) there is nothing to reload.
    booted = Path("/run/systemd/system").is_dir()
    assert ("systemctl daemon-reload" in proc.stdout) == booted
    assert ("systemd is not running here" in proc.stdout) != booted
    proc = sh("install.sh", "--dry-run", destdir=tmp_path / "root")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "root").exists()


def test_install_rejects_unknown_options() -> None:
    proc = sh("install.sh", "--frobnicate")
    assert proc.returncode == 2 and "unknown option" in proc.stderr


def test_destdir_install_is_idempotent_and_keeps_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = sh("install.sh", "--no-venv", "--prefix", "/srv/dgx", destdir=root)
    assert first.returncode == 0, first.stderr
    snapshot = tree(root)
    assert set(snapshot) >= {
        "etc/systemd/system/dgx-music.service",
        "etc/systemd/system/dgx-music@.service",
        "etc/sysusers.d/dgx-music.conf",
        "etc/tmpfiles.d/dgx-music.conf",
        "etc/dgx-music/config.yaml",
    }
    unit = (root / "etc/systemd/system/dgx-music.service").read_text()
    assert "ExecStart=/srv/dgx/venv/bin/dgx-music serve --config /etc/dgx-music/config.yaml" in unit
    assert DEFAULT_EXEC not in unit
    assert snapshot["etc/systemd/system/dgx-music.service"][0] == oct(0o100644)

    second = sh("install.sh", "--no-venv", "--prefix", "/srv/dgx", destdir=root)
    assert second.returncode == 0, second.stderr
    assert tree(root) == snapshot
    assert "+ install" not in second.stdout and "unchanged" in second.stdout

    # An operator's config survives a reinstall.
    config = root / "etc/dgx-music/config.yaml"
    config.write_text("default_model: small\n")
    assert sh("install.sh", "--no-venv", "--prefix", "/srv/dgx", destdir=root).returncode == 0
    assert config.read_text() == "default_model: small\n"


def test_uninstall_keeps_data_unless_purge(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert sh("install.sh", "--no-venv", destdir=root).returncode == 0
    spool = root / "var/lib/dgx-music/outbox"
    spool.mkdir(parents=True)
    (spool / "song.wav").write_bytes(b"RIFF")
    venv_py = root / "opt/dgx-music/venv/bin/python"
    venv_py.parent.mkdir(parents=True)
    venv_py.write_text("")

    proc = sh("uninstall.sh", destdir=root)
    assert proc.returncode == 0, proc.stderr
    assert not (root / "etc/systemd/system/dgx-music.service").exists()
    assert not (root / "etc/systemd/system/dgx-music@.service").exists()
    assert not (root / "etc/sysusers.d/dgx-music.conf").exists()
    assert not (root / "etc/tmpfiles.d/dgx-music.conf").exists()
    assert not (root / "opt/dgx-music").exists()
    assert (root / "etc/dgx-music/config.yaml").exists()
    assert (spool / "song.wav").exists()

    proc = sh("uninstall.sh", "--purge", destdir=root)
    assert proc.returncode == 0, proc.stderr
    assert not (root / "etc/dgx-music").exists() and not (root / "var/lib/dgx-music").exists()


def test_uninstall_dry_run_lists_the_live_steps() -> None:
    proc = sh("uninstall.sh", "--dry-run", "--purge")
    assert proc.returncode == 0, proc.stderr
    assert "systemctl disable --now dgx-music.service" in proc.stdout
    assert "systemctl daemon-reload" in proc.stdout
