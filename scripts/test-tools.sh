#!/usr/bin/env bash
# The tools only the tests need (`make test` runs this; `make demo` and the product do not): the
# outbox page is judged in a headless Chromium, mp3/ogg/flac files and loudness with ffmpeg, the
# Slurm scripts and daemons on a real test cluster (slurm-wlm + munge), a scratch root with
# debootstrap (install.sh on a clean Debian). As root on Debian/Ubuntu they are installed (one
# `apt-get update` first); otherwise, or when that fails, the tests that need them skip and say
# so, and CI (.ci/run) fails on that skip. Triton too, where torch brought none (below).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
missing=
have chromium || have chromium-browser || missing="$missing chromium"
have ffprobe || missing="$missing ffmpeg"
have slurmctld || missing="$missing slurm-wlm"
have munged || missing="$missing munge"
have debootstrap || missing="$missing debootstrap"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test-tools: installing$missing (the tests use them)" >&2
        # shellcheck disable=SC2086  # a list of package names
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null; } \
            || echo "test-tools: could not install$missing; the tests that need them will skip" >&2
    else
        echo "test-tools:$missing not found; the tests that need them will skip (sudo apt-get install$missing)" >&2
    fi
fi

# The fused step's Triton kernels run in Triton's interpreter where there is no GPU. A CUDA build
# of torch brings the Triton it was built with (and pins it); only where torch brought none is one
# added here: the [test] extra cannot say so, since no marker sees which torch build is installed.
case "$(uname -s)/$(uname -m)" in
    Linux/x86_64 | Linux/aarch64)
        if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c "import triton" 2>/dev/null; then
            echo "test-tools: installing Triton (torch brought none; the kernel tests run it interpreted)" >&2
            # 3.6's interpreter fails on numpy 2.4 (a loop bound read as an array); 3.9 runs the kernels.
            "$VENV/bin/python" -m pip install -q 'triton>=3.9'
        fi
        ;;
esac
