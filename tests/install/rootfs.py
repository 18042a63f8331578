"""A clean Debian root filesystem for install tests: built once with debootstrap (minbase: no
compiler, no Python), kept as a tarball, unpacked afresh for every test, and entered with chroot.

What the chroot borrows from this machine is only what reaching the registries takes: the CA
certificates, the resolver, apt's and pip's settings, and the local wheel folders pip's settings
name (bind-mounted read-only, so torch is not downloaded again). apt's downloaded packages are kept
in a folder of the cache between runs; the packages themselves are installed afresh each time.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUITE = "bookworm"  # Debian 12: its python3 is 3.11, the Python of the local torch wheel
MIRROR = "http://deb.debian.org/debian"
CACHE = Path(os.environ.get("DGX_MUSIC_ROOTFS_CACHE") or Path.home() / ".cache" / "dgx-music-tests")
# pip's and apt's settings and the certificates, as files: copied into the chroot where they are.
HOST_FILES = (
    "etc/resolv.conf",
    "etc/pip.conf",
    "etc/xdg/pip/pip.conf",
    "etc/xdg/pip/constraints.txt",
    "root/.config/pip/pip.conf",
    "etc/ssl/certs/ca-certificates.crt",
)
HOST_DIRS = ("usr/local/share/ca-certificates", "etc/apt/apt.conf.d")
APT_CONF_SKIP = ("docker-clean",)  # would delete the kept packages after every install


def why_not() -> str | None:
    """Why the clean-rootfs test cannot run here, or None."""
    if platform.system() != "Linux":
        return "needs Linux (debootstrap and chroot)"
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot and bind mounts)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (apt-get install debootstrap)"
    if shutil.which("chroot") is None or shutil.which("mount") is None:
        return "chroot and mount are needed"
    return None


def local_wheel_dirs() -> list[Path]:
    """The local folders pip's settings name (find-links, file:// indexes): bound into the chroot."""
    out = subprocess.run(
        ["python3", "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    values = [
        v for line in out.splitlines() if "=" in line for v in line.split("=", 1)[1].strip("'\"").split()
    ]
    values += os.environ.get("PIP_FIND_LINKS", "").split()
    dirs: list[Path] = []
    for v in values:
        path = Path(v.removeprefix("file://"))
        if (v.startswith("/") or v.startswith("file:///")) and path.is_dir():
            # An index's simple/ folder links to files beside it: bind the folder above.
            top = path.parent if path.name == "simple" else path
            if top not in dirs:
                dirs.append(top)
    return dirs


def pristine_tarball(log: Path) -> Path:
    """The minbase rootfs as a tarball, built by debootstrap the first time."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    tarball = CACHE / f"rootfs-{SUITE}-{arch}-minbase.tar"
    if tarball.is_file():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    build = CACHE / f"rootfs-{SUITE}-building"
    if build.exists():
        shutil.rmtree(build)
    with log.open("ab") as fh:
        subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(build), MIRROR],
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=1800,
        )
    partial = tarball.with_suffix(".part")
    with tarfile.open(partial, "w") as tar:
        tar.add(build, arcname=".")
    partial.rename(tarball)
    shutil.rmtree(build)
    return tarball


@contextmanager
def chroot_of(tarball: Path, where: Path, binds: list[Path]) -> Iterator[Path]:
    """The tarball unpacked in `where`, with /proc, /dev, the host files and `binds` (read-only)
    mounted; everything is unmounted again, and nothing is deleted across a mount."""
    root = where / "root"
    root.mkdir()
    subprocess.run(["tar", "-xpf", str(tarball), "-C", str(root)], check=True)
    for rel in HOST_FILES:
        src = Path("/") / rel
        if src.is_file():
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.unlink(missing_ok=True)  # resolv.conf may be a dangling link
            shutil.copy2(src, dest)
    for rel in HOST_DIRS:
        src = Path("/") / rel
        if src.is_dir():
            for f in src.iterdir():
                if f.is_file() and f.name not in APT_CONF_SKIP:
                    (root / rel).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, root / rel / f.name)
    # Services are not started inside a chroot (the usual policy of image builders).
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)

    archives = CACHE / f"apt-archives-{SUITE}"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    mounted: list[Path] = []

    def mount(*args: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args, str(target)], check=True)
        mounted.append(target)

    # pip's cache too: wheels it built (systemd-python) and downloaded are not made again.
    pip_cache = CACHE / f"pip-cache-{SUITE}"
    pip_cache.mkdir(parents=True, exist_ok=True)
    try:
        mount("-t", "proc", "proc", target=root / "proc")
        mount("--bind", "/dev", target=root / "dev")
        mount("--bind", str(archives), target=root / "var/cache/apt/archives")
        mount("--bind", str(pip_cache), target=root / "root/.cache/pip")
        for d in binds:
            target = root / d.relative_to("/")
            mount("--bind", str(d), target=target)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield root
    finally:
        _kill_processes_in(root)
        for target in reversed(mounted):
            if subprocess.run(["umount", str(target)], check=False).returncode != 0:
                # Detached at once even when busy, so nothing below can reach the host's files.
                subprocess.run(["umount", "-l", str(target)], check=False)
        # Bind mounts share the host's device, so rm's --one-file-system would not stop at them:
        # delete only when none is left below the root.
        if not _mounts_below(root):
            subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


def _kill_processes_in(root: Path) -> None:
    """SIGKILL whatever still runs with `root` as its root directory (a daemon a failed step left)."""
    deadline = time.monotonic() + 10
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(os.readlink(proc / "root")).resolve() == root.resolve():
                os.kill(int(proc.name), signal.SIGKILL)
                while (proc / "root").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)  # gone from /proc once reaped: then its mounts are free
        except (OSError, ValueError):
            continue


def _mounts_below(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        points = [line.split()[1] for line in fh]
    return [p for p in points if p.startswith(prefix)]


def run_in(root: Path, script: str, log: Path, timeout: float) -> int:
    """`script` run by /bin/sh inside the chroot as root, with a new owner's environment."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    with log.open("ab") as fh:
        proc = subprocess.run(
            ["chroot", str(root), "/bin/sh", "-c", script],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=timeout,
            check=False,
        )
    return proc.returncode
