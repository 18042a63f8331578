#!/usr/bin/env bash
# The tools only the tests need (`make test` runs this; `make demo` and the product do not): the
# outbox page is judged in a headless Chromium, mp3/ogg/flac files with ffprobe (ffmpeg). As root
# on Debian/Ubuntu they are installed; otherwise, or when that fails, the tests that need them
# skip and say so.
set -euo pipefail
missing=
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing="$missing chromium"
command -v ffprobe >/dev/null || missing="$missing ffmpeg"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test-tools: installing$missing (the page and audio-format tests use them)" >&2
        # shellcheck disable=SC2086  # a list of package names
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; } \
            || echo "test-tools: could not install$missing; the tests that need them will skip" >&2
    else
        echo "test-tools:$missing not found; the tests that need them will skip (sudo apt-get install$missing)" >&2
    fi
fi

