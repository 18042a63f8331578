#!/usr/bin/env bash
# Creates ./.venv with everything dgx-music needs (idempotent; re-run after pulling).
# The CPU torch wheel goes in first: anything that depends on torch would otherwise pull the
# multi-gigabyte CUDA build. On a DGX use systemd/install.sh instead (CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

# systemd-python compiles against libsystemd.
if [ "$(uname -s)" = Linux ] && ! pkg-config --exists libsystemd 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing libsystemd-dev and pkg-config (needed to build systemd-python)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsystemd-dev pkg-config >/dev/null
    else
        echo "bootstrap: libsystemd-dev and pkg-config are missing; install them (e.g. sudo apt-get install libsystemd-dev pkg-config)" >&2
        exit 2
    fi
fi

# Loops are time-stretched by Rubber Band's CLI when it is there (librosa's phase vocoder otherwise,
# which blurs attacks more: README, "Loops").
if ! command -v rubberband >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rubberband-cli >/dev/null; } \
        || echo "bootstrap: could not install rubberband-cli; loops use librosa's stretcher" >&2
fi

stamp="$VENV/.dgx-music-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q -e '.[test]'
touch "$stamp"
