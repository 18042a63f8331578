#!/bin/sh
# Install dgx-music as a systemd service: venv, units, system user, spool, config.
#
#   sudo ./systemd/install.sh [--enable] [--torch auto|cpu|cu128|cu130] [--prefix DIR] [--venv DIR]
#                             [--python PY] [--pip-args "ARGS"] [--wheel FILE] [--no-venv]
#                             [--no-os-packages] [--dry-run]
#
# On a fresh Debian/Ubuntu/DGX OS box it first installs the OS packages the venv needs (python3
# with venv and headers, a C compiler, libsystemd-dev and pkg-config: systemd-python has no wheel
# and is compiled), then the torch build the machine can use (--torch auto: the rule of
# daemon/ops/torchbuild.py, the same one `dgx-music doctor` suggests), then dgx-music with every
# dependency pinned by systemd/constraints.txt (the versions the test suite ran against).
#
# Idempotent: run it again after `git pull` to upgrade the code and the units; an existing
# /etc/dgx-music/config.yaml is never touched. A running service keeps the old code until
# `systemctl restart dgx-music`.
#
# DESTDIR=/some/root installs the files below that root (packaging, tests) and skips
# everything that acts on the live system (pip into DESTDIR aside): systemd-sysusers,
# systemd-tmpfiles, systemctl.
set -eu

usage() {
    cat <<'USAGE'
usage: install.sh [options]
  --prefix DIR      program files (default /opt/dgx-music)
  --venv DIR        virtual environment (default PREFIX/venv)
  --python PY       interpreter that creates the venv (default python3, >= 3.10)
  --torch BUILD     auto (default: from the driver's CUDA version in nvidia-smi), cpu, cu128, cu130
  --pip-args ARGS   extra pip arguments, e.g. "--index-url https://pypi.example.org/simple"
  --wheel FILE      install this built dgx-music wheel instead of building one from the checkout
  --no-venv         do not create the venv or pip install (it is managed elsewhere)
  --no-os-packages  do not apt-get install what is missing (fail instead, naming it)
  --enable          enable and start dgx-music.service when done
  --dry-run         print what would be done, change nothing
  -h, --help        this text
environment: DESTDIR=ROOT installs below ROOT and leaves the running system alone.
USAGE
}

PREFIX=/opt/dgx-music
VENV=
PYTHON=python3
PIP_ARGS=
WHEEL=
NO_VENV=0
OS_PACKAGES=1
TORCH=auto
ENABLE=0
DRY_RUN=0
DESTDIR=${DESTDIR:-}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --venv) VENV=${2:?--venv needs a directory}; shift 2 ;;
        --venv=*) VENV=${1#*=}; shift ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        --pip-args) PIP_ARGS=${2?--pip-args needs a value}; shift 2 ;;
        --pip-args=*) PIP_ARGS=${1#*=}; shift ;;
        --wheel) WHEEL=${2:?--wheel needs a file}; shift 2 ;;
        --wheel=*) WHEEL=${1#*=}; shift ;;
        --no-venv) NO_VENV=1; shift ;;
        --no-os-packages) OS_PACKAGES=0; shift ;;
        --torch) TORCH=${2:?--torch needs auto, cpu, cu128 or cu130}; shift 2 ;;
        --torch=*) TORCH=${1#*=}; shift ;;
        --enable) ENABLE=1; shift ;;
        --dry-run|-n) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ -n "$VENV" ] || VENV=$PREFIX/venv
case "$TORCH" in
    auto|cpu|cu128|cu130) ;;
    cu[0-9][0-9]*) echo "install.sh: --torch $TORCH: not a build dgx-music was tested with (cpu, cu128, cu130)" >&2 ;;
    *) echo "install.sh: --torch must be auto, cpu, cu128 or cu130, not $TORCH" >&2; exit 2 ;;
esac
case "$PREFIX$VENV" in
    *'|'*|*'\'*|*'&'*) echo "install.sh: --prefix/--venv must not contain | \\ or &" >&2; exit 2 ;;
esac
case "$PREFIX" in /*) ;; *) echo "install.sh: --prefix must be an absolute path" >&2; exit 2 ;; esac
case "$VENV" in /*) ;; *) echo "install.sh: --venv must be an absolute path" >&2; exit 2 ;; esac

SRC=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "$WHEEL" ] && [ ! -f "$WHEEL" ]; then
    echo "install.sh: --wheel $WHEEL: no such file" >&2
    exit 2
fi
UNITDIR=/etc/systemd/system
CONSTRAINTS=$SRC/systemd/constraints.txt
TORCH_INDEX=https://download.pytorch.org/whl
LIVE=1                      # act on the running system (sysusers, tmpfiles, systemctl)
[ -z "$DESTDIR" ] || LIVE=0

if [ "$DRY_RUN" = 0 ] && [ "$LIVE" = 1 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo), or use --dry-run / DESTDIR=" >&2
    exit 2
fi
if [ "$LIVE" = 1 ] && [ "$ENABLE" = 1 ] && ! command -v systemctl >/dev/null 2>&1; then
    echo "install.sh: --enable needs systemctl" >&2
    exit 2
fi

say() { printf '%s\n' "$*"; }

# Print a command; run it unless --dry-run.
run() {
    say "+ $*"
    [ "$DRY_RUN" = 1 ] || "$@"
}

# Copy SRC to DESTDIR/DEST with MODE, replacing the default install paths in it. Reports
# whether the file changed, so a second run shows it did nothing.
put() {
    src=$1 dest=$DESTDIR$2 mode=$3
    tmp=$(mktemp)
    sed -e "s|/opt/dgx-music/venv|$VENV|g" -e "s|/opt/dgx-music/docs|$PREFIX/docs|g" "$src" >"$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
        say "  unchanged $dest"
        rm -f "$tmp"
        return 0
    fi
    if [ "$DRY_RUN" = 1 ]; then
        say "+ install -D -m $mode $src $dest"
        rm -f "$tmp"
        return 0
    fi
    say "+ install -D -m $mode $src $dest"
    install -D -m "$mode" "$tmp" "$dest"
    rm -f "$tmp"
}

say "dgx-music: installing from $SRC (prefix $PREFIX, venv $VENV${DESTDIR:+, DESTDIR $DESTDIR})"

# 0. OS packages, before anything else is touched. Each is looked for by what it provides, so a
# machine that has them another way (another Python, a compiler from elsewhere) is left alone.
missing_packages() {
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        printf ' %s' python3 python3-venv python3-dev
    else
        "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || printf ' %s' python3-venv
        "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1 \
            || printf ' %s' python3-dev
    fi
    command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || printf ' %s' gcc libc6-dev
    if ! command -v pkg-config >/dev/null 2>&1; then
        printf ' %s' pkg-config libsystemd-dev
    elif ! pkg-config --exists libsystemd; then
        printf ' %s' libsystemd-dev
    fi
    [ -s /etc/ssl/certs/ca-certificates.crt ] || printf ' %s' ca-certificates
    if [ "$LIVE" = 1 ] && ! command -v systemd-sysusers >/dev/null 2>&1; then
        printf ' %s' systemd
    fi
}
if [ "$NO_VENV" = 1 ]; then
    PACKAGES=   # no venv to build: only the units are installed
else
    PACKAGES=$(missing_packages)
fi
if [ -z "$PACKAGES" ]; then
    say "  OS packages: all present (python3 venv + headers, C compiler, pkg-config, libsystemd-dev)"
elif [ "$OS_PACKAGES" = 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: missing OS packages:$PACKAGES (systemd-python is compiled: it needs a C compiler," >&2
    echo "  the Python headers, pkg-config and libsystemd-dev); on Debian/Ubuntu: sudo apt-get install$PACKAGES" >&2
    [ "$DRY_RUN" = 1 ] || exit 2
elif [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: missing OS packages:$PACKAGES; run as root, or first: sudo apt-get install$PACKAGES" >&2
    exit 2
else
    say "  OS packages missing:$PACKAGES"
    run apt-get update -q
    # shellcheck disable=SC2086  # a list of package names
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PACKAGES
fi

# 1. The venv and the code: torch first, the build this machine can use, then everything else
# pinned by the constraints file.
if [ "$NO_VENV" = 1 ]; then
    say "  skipping the venv (--no-venv)"
else
    TORCH_VERSION=$(sed -n 's/^torch==\([0-9][0-9.]*\).*/\1/p' "$CONSTRAINTS")
    [ -n "$TORCH_VERSION" ] || { echo "install.sh: $CONSTRAINTS pins no torch" >&2; exit 2; }
    if [ "$TORCH" = auto ]; then
        if command -v "$PYTHON" >/dev/null 2>&1; then
            set +e
            chosen=$("$PYTHON" "$SRC/daemon/ops/torchbuild.py")
            rc=$?
            set -e
            BUILD=${chosen%%"$(printf '\t')"*}
            WHY=${chosen#*"$(printf '\t')"}
            if [ "$rc" != 0 ]; then
                echo "install.sh: --torch auto: $WHY" >&2
                [ "$DRY_RUN" = 1 ] || exit 2
                BUILD=cpu
            fi
        else
            BUILD=cpu WHY="(dry run: $PYTHON is not installed yet, nvidia-smi is read once it is)"
        fi
        say "  torch $TORCH_VERSION: $BUILD, chosen by --torch auto: $WHY"
    else
        BUILD=$TORCH
        say "  torch $TORCH_VERSION: $BUILD (--torch $TORCH)"
    fi
    if [ -x "$DESTDIR$VENV/bin/python" ]; then
        say "  venv exists: $DESTDIR$VENV"
    else
        run "$PYTHON" -m venv "$DESTDIR$VENV"
    fi
    PIP="$DESTDIR$VENV/bin/python -m pip"
    # shellcheck disable=SC2086  # PIP is a command of several words
    run $PIP install --quiet --upgrade pip
    if command -v "$PYTHON" >/dev/null 2>&1 && "$PYTHON" -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=10).close()' "$TORCH_INDEX/$BUILD/torch/" >/dev/null 2>&1; then
        # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
        run $PIP install --quiet -c "$CONSTRAINTS" --extra-index-url "$TORCH_INDEX/$BUILD" $PIP_ARGS \
            "torch==$TORCH_VERSION+$BUILD"
    elif [ "$BUILD" = cu128 ]; then
        echo "install.sh: $TORCH_INDEX/cu128 cannot be reached, and no other index has that build;" >&2
        echo "  make it reachable, or name a mirror of it: --pip-args \"--extra-index-url URL\"" >&2
        [ "$DRY_RUN" = 1 ] || exit 2
    else
        say "  $TORCH_INDEX/$BUILD cannot be reached: taking torch==$TORCH_VERSION from pip's own index"
        say "  instead (a local mirror's wheel if pip is configured with one; on PyPI it is the CUDA 13 build)"
        # shellcheck disable=SC2086
        run $PIP install --quiet -c "$CONSTRAINTS" $PIP_ARGS "torch==$TORCH_VERSION"
    fi
    # shellcheck disable=SC2086
    run $PIP install --quiet -c "$CONSTRAINTS" $PIP_ARGS "${WHEEL:-$SRC}"
fi
if [ -f "$SRC/docs/service.md" ]; then
    put "$SRC/docs/service.md" "$PREFIX/docs/service.md" 0644
fi

# 2. Units, user, spool layout, config.
put "$SRC/systemd/dgx-music.service" "$UNITDIR/dgx-music.service" 0644
put "$SRC/systemd/dgx-music@.service" "$UNITDIR/dgx-music@.service" 0644
put "$SRC/systemd/dgx-music.sysusers" /etc/sysusers.d/dgx-music.conf 0644
put "$SRC/systemd/dgx-music.tmpfiles" /etc/tmpfiles.d/dgx-music.conf 0644
if [ -e "$DESTDIR/etc/dgx-music/config.yaml" ]; then
    say "  keeping $DESTDIR/etc/dgx-music/config.yaml"
else
    put "$SRC/systemd/config.example.yaml" /etc/dgx-music/config.yaml 0644
fi

# 3. Apply them to the running system.
if [ "$LIVE" = 0 ]; then
    say "  DESTDIR set: not running systemd-sysusers, systemd-tmpfiles or systemctl"
else
    run systemd-sysusers /etc/sysusers.d/dgx-music.conf
    run systemd-tmpfiles --create /etc/tmpfiles.d/dgx-music.conf
    if [ -d /run/systemd/system ]; then
        run systemctl daemon-reload
        if [ "$ENABLE" = 1 ]; then
            run systemctl enable --now dgx-music.service
        fi
    else
        # A chroot, a container or an image being built: the units take effect at its next boot.
        say "  systemd is not running here: no daemon-reload; the units are read at the next boot"
        if [ "$ENABLE" = 1 ]; then
            run systemctl enable dgx-music.service
        fi
    fi
fi

say "done."
if [ "$ENABLE" = 0 ] && [ "$LIVE" = 1 ]; then
    say "next: edit /etc/dgx-music/config.yaml, then: sudo systemctl enable --now dgx-music"
    say "      (or one per GPU: sudo systemctl enable --now dgx-music@0 dgx-music@1 ...)"
fi
if [ "$LIVE" = 1 ] && [ "$DRY_RUN" = 0 ] && systemctl is-active --quiet dgx-music.service 2>/dev/null; then
    say "dgx-music.service is running the previous code: sudo systemctl restart dgx-music"
fi
