#!/bin/sh
# Remove the dgx-music service: stop and disable it (every per-GPU instance too), remove the
# units, sysusers.d and tmpfiles.d entries and the venv. The spool (/var/lib/dgx-music: jobs
# and results), the model cache (/var/cache/dgx-music) and /etc/dgx-music stay unless
# --purge. The dgx-music user and groups always stay: system IDs are not recycled, so files
# left behind never change owner.
#
#   sudo ./systemd/uninstall.sh [--purge] [--prefix DIR] [--venv DIR] [--dry-run]
set -eu

usage() {
    cat <<'USAGE'
usage: uninstall.sh [options]
  --prefix DIR   program files (default /opt/dgx-music)
  --venv DIR     virtual environment (default PREFIX/venv)
  --purge        also delete the spool, the model cache and /etc/dgx-music
  --dry-run      print what would be done, change nothing
  -h, --help     this text
environment: DESTDIR=ROOT removes below ROOT and leaves the running system alone.
USAGE
}

PREFIX=/opt/dgx-music
VENV=
PURGE=0
DRY_RUN=0
DESTDIR=${DESTDIR:-}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --venv) VENV=${2:?--venv needs a directory}; shift 2 ;;
        --venv=*) VENV=${1#*=}; shift ;;
        --purge) PURGE=1; shift ;;
        --dry-run|-n) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "uninstall.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ -n "$VENV" ] || VENV=$PREFIX/venv
case "$PREFIX" in /*) ;; *) echo "uninstall.sh: --prefix must be an absolute path" >&2; exit 2 ;; esac
case "$VENV" in /*) ;; *) echo "uninstall.sh: --venv must be an absolute path" >&2; exit 2 ;; esac
if [ "$PREFIX" = / ] || [ "$VENV" = / ]; then
    echo "uninstall.sh: refusing to remove /" >&2
    exit 2
fi

UNITDIR=/etc/systemd/system
LIVE=1
[ -z "$DESTDIR" ] || LIVE=0
if [ "$DRY_RUN" = 0 ] && [ "$LIVE" = 1 ] && [ "$(id -u)" != 0 ]; then
    echo "uninstall.sh: run as root (sudo), or use --dry-run / DESTDIR=" >&2
    exit 2
fi

say() { printf '%s\n' "$*"; }
run() {
    say "+ $*"
    [ "$DRY_RUN" = 1 ] || "$@"
}
remove() {
    for p in "$@"; do
        if [ -e "$DESTDIR$p" ] || [ -L "$DESTDIR$p" ]; then
            run rm -rf -- "$DESTDIR$p"
        fi
    done
}

if [ "$LIVE" = 1 ]; then
    # Enabled instances are the wants/ links; running ones may not be enabled.
    units="dgx-music.service"
    for link in "$UNITDIR"/*.wants/dgx-music@*.service; do
        [ -e "$link" ] || [ -L "$link" ] || continue
        units="$units $(basename "$link")"
    done
    running=$(systemctl list-units --all --plain --no-legend 'dgx-music@*.service' 2>/dev/null | awk '{print $1}')
    units=$(printf '%s\n' $units $running | sort -u | tr '\n' ' ')
    # shellcheck disable=SC2086
    run systemctl disable --now $units || say "  (some units were not loaded)"
fi

remove "$UNITDIR/dgx-music.service" "$UNITDIR/dgx-music@.service" \
    /etc/sysusers.d/dgx-music.conf /etc/tmpfiles.d/dgx-music.conf \
    "$VENV" "$PREFIX/docs"
# The prefix itself, if nothing else lives there.
if [ -d "$DESTDIR$PREFIX" ] && [ -z "$(ls -A "$DESTDIR$PREFIX" 2>/dev/null)" ]; then
    run rmdir -- "$DESTDIR$PREFIX"
fi

if [ "$PURGE" = 1 ]; then
    remove /var/lib/dgx-music /var/cache/dgx-music /etc/dgx-music
else
    say "  kept: /var/lib/dgx-music (spool), /var/cache/dgx-music (models), /etc/dgx-music (config); --purge removes them"
fi

if [ "$LIVE" = 1 ]; then
    run systemctl daemon-reload
    run systemctl reset-failed 'dgx-music*' || true
fi
say "done. The dgx-music user and the dgx-music-submit group are left in place."
