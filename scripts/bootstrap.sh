#!/usr/bin/env bash
# Creates ./.venv with everything dgx-music needs (idempotent; re-run after pulling).
# The CPU torch wheel goes in first, from PyPI's CPU index: anything that depends on torch would
# otherwise pull the multi-gigabyte CUDA build. On a DGX use systemd/install.sh instead (CUDA torch).
# TORCH_SPEC=... names another torch (e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
CPU_INDEX=https://download.pytorch.org/whl/cpu

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
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    # The torch release the service is pinned to (systemd/constraints.txt): both venvs run one torch.
    TORCH_VERSION=$(sed -n 's/^torch==\([0-9][0-9.]*\).*/\1/p' systemd/constraints.txt)
    if [ -n "${TORCH_SPEC:-}" ]; then
        # shellcheck disable=SC2086  # a requirement and pip options
        "$VENV/bin/python" -m pip install -q $TORCH_SPEC
    elif "$VENV/bin/python" -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=10).close()' "$CPU_INDEX/torch/" 2>/dev/null; then
        echo "bootstrap: installing the CPU build of torch $TORCH_VERSION from $CPU_INDEX" >&2
        "$VENV/bin/python" -m pip install -q --extra-index-url "$CPU_INDEX" "torch==$TORCH_VERSION+cpu"
    else
        echo "bootstrap: $CPU_INDEX cannot be reached: installing torch==$TORCH_VERSION from pip's own index" >&2
        echo "  (a local mirror's wheel where pip is configured with one; on PyPI that is a CUDA build of" >&2
        echo "  several GB: to avoid it, set TORCH_SPEC to a CPU wheel file or a reachable CPU index)" >&2
        "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
    fi
fi
"$VENV/bin/python" -m pip install -q -e '.[test]'
touch "$stamp"
