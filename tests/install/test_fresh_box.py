"""systemd/install.sh on a box that has nothing: a clean Debian 12 root filesystem (debootstrap
minbase: no compiler, no Python, no systemd), where install.sh is run as a new owner would run it
from a checkout. It must install the OS packages itself, the CPU torch (no NVIDIA driver there),
the pinned dependencies, the units and the user; the installed dgx-music must then reach READY on
a temporary spool with the tiny model and complete a job, as the service user.

Slow (minutes: apt and pip install for real). The minbase tarball and apt's downloaded packages
are kept in DGX_MUSIC_ROOTFS_CACHE (default ~/.cache/dgx-music-tests) between runs.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from rootfs import chroot_of, local_wheel_dirs, pristine_tarball, run_in, why_not

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_not() is not None, reason=str(why_not()))]

# Run inside the chroot after install.sh: the service user starts the installed console script on
# a temporary spool with a tiny checkpoint, waits for READY, submits one job and waits for it.
AFTER_INSTALL = r"""
set -eu
BIN=/opt/dgx-music/venv/bin
T=/var/tmp/fresh
install -d -o dgx-music -g dgx-music $T
cd $T
runuser -u dgx-music -- $BIN/dgx-music model init-tiny $T/tiny >/dev/null
cat >$T/config.yaml <<EOF
spool: $T/spool
models: {tiny: {path: $T/tiny}}
default_model: tiny
device: cpu
warmup: false
settle_s: 0.2
EOF
cat >$T/job.yaml <<EOF
prompt: a fresh box plays its first note
duration: 1
EOF
# As the unit starts it: its Environment= lines (offline hub, caches under /var/cache/dgx-music,
# which tmpfiles made). setpriv execs the daemon itself, so $pid is the daemon's own.
# shellcheck disable=SC2046  # one word per Environment= line
env $(sed -n 's/^Environment=//p' /etc/systemd/system/dgx-music.service) \
    setpriv --reuid dgx-music --regid dgx-music --init-groups -- \
    $BIN/dgx-music serve --config $T/config.yaml >$T/serve.log 2>&1 &
pid=$!
i=0
until grep -q "ready: watching" $T/serve.log; do
    i=$((i + 1))
    if [ $i -gt 600 ] || ! kill -0 $pid 2>/dev/null; then cat $T/serve.log; exit 3; fi
    sleep 0.5
done
echo "fresh-box: READY"
runuser -u dgx-music -- $BIN/dgx-music submit --config $T/config.yaml --wait --timeout 600 $T/job.yaml
kill -TERM $pid
rc=0
wait $pid || rc=$?
echo "fresh-box: serve exited $rc"
cp $T/spool/outbox/job.json $T/sidecar.json
"""


@pytest.mark.timeout(2700)
def test_install_sh_alone_sets_up_a_clean_debian_and_the_service_runs_a_job(tmp_path: Path) -> None:
    log = tmp_path / "fresh-box.log"
    t0 = time.monotonic()
    tarball = pristine_tarball(log)
    t_rootfs = time.monotonic() - t0
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    with chroot_of(tarball, tmp_path, local_wheel_dirs()) as root:
        # Nothing of what install.sh must bring is there before it runs.
        for tool in ("usr/bin/python3", "usr/bin/gcc", "usr/bin/pkg-config", "usr/bin/systemd-sysusers"):
            assert not (root / tool).exists(), f"{tool} in the clean rootfs"
        checkout = root / "root" / "dgx-music"
        checkout.mkdir()
        subprocess.run(
            ["tar", "-cf", "-", "--null", "-T", "-"],
            cwd=REPO,
            input=b"\0".join(f for f in files if f and (REPO / f.decode()).exists()),
            stdout=open(tmp_path / "checkout.tar", "wb"),
            check=True,
        )
        subprocess.run(["tar", "-xf", str(tmp_path / "checkout.tar"), "-C", str(checkout)], check=True)

        t1 = time.monotonic()
        rc = run_in(root, "cd /root/dgx-music && ./systemd/install.sh", log, timeout=1500)
        t_install = time.monotonic() - t1
        text = log.read_text(errors="replace")
        assert rc == 0, text[-6000:]
        assert "OS packages missing: python3 python3-venv python3-dev gcc libc6-dev" in text, text[-6000:]
        assert "libsystemd-dev" in text
        assert "torch 2.13.0: cpu, chosen by --torch auto: no NVIDIA driver" in text
        venv = root / "opt/dgx-music/venv"
        site = next(venv.glob("lib/python3*/site-packages"))
        assert not list(site.glob("nvidia*")) and not list(site.glob("triton*")), "CUDA packages on a CPU box"
        pins = dict(
            line.split("==", 1)
            for line in (REPO / "systemd/constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#") and ";" not in line
        )
        for dist in site.glob("*.dist-info"):
            name, version = dist.name[: -len(".dist-info")].rsplit("-", 1)
            key = name.lower().replace("_", "-")
            if key in pins:
                assert version.split("+")[0] == pins[key], f"{key} {version}, constraints say {pins[key]}"
        assert (root / "etc/systemd/system/dgx-music.service").is_file()
        assert "dgx-music:" in (root / "etc/passwd").read_text()

        t2 = time.monotonic()
        rc = run_in(root, AFTER_INSTALL, log, timeout=900)
        t_run = time.monotonic() - t2
        text = log.read_text(errors="replace")
        assert rc == 0, text[-6000:]
        assert "fresh-box: READY" in text
        assert "fresh-box: serve exited 0" in text  # drained on TERM, as systemd stops it
        sidecar = json.loads((root / "var/tmp/fresh/sidecar.json").read_text())
        assert sidecar["status"] == "completed", sidecar
    print(
        f"fresh box: rootfs {t_rootfs:.0f} s (0 when cached), install.sh {t_install:.0f} s, "
        f"READY + one job {t_run:.0f} s"
    )
