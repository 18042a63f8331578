#!/bin/sh
# Install dgx-music as a systemd service: venv, units, system user, spool, config.
#
#   sudo ./systemd/install.sh [--enable] [--prefix DIR] [--venv DIR] [--python PY]
#                             [--pip-args "ARGS"] [--wheel FILE] [--no-venv] [--dry-run]
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
  --pip-args ARGS   extra pip arguments, e.g. "--extra-index-url https://download.pytorch.org/whl/cu128"
  --wheel FILE      install this built dgx-music wheel instead of building one from the checkout
  --no-venv         do not create the venv or pip install (it is managed elsewhere)
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
        --enable) ENABLE=1; shift ;;
        --dry-run|-n) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ -n "$VENV" ] || VENV=$PREFIX/venv
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

# 1. The venv and the code.
if [ "$NO_VENV" = 1 ]; then
    say "  skipping the venv (--no-venv)"
else
    if [ -x "$DESTDIR$VENV/bin/python" ]; then
        say "  venv exists: $DESTDIR$VENV"
    else
        run "$PYTHON" -m venv "$DESTDIR$VENV"
    fi
    # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
    run "$DESTDIR$VENV/bin/python" -m pip install --quiet --upgrade pip
    # shellcheck disable=SC2086
    run "$DESTDIR$VENV/bin/python" -m pip install --quiet $PIP_ARGS "${WHEEL:-$SRC}"
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
    run systemctl daemon-reload
    if [ "$ENABLE" = 1 ]; then
        run systemctl enable --now dgx-music.service
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
