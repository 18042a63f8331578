#!/usr/bin/env bash
# The wheel is the product: build it, install it with systemd/install.sh into a DESTDIR (a fresh
# venv, not editable), and run the installed console script from outside the checkout: --version,
# examples + validate, demo, a served job that reaches READY, systemd-analyze verify on the
# installed units, and the daemon end-to-end tests against that console script.
#   scripts/check-installed.sh                 all of it
#   scripts/check-installed.sh install         up to and including systemd-analyze (pip: mostly I/O)
#   scripts/check-installed.sh test [ARGS]     the daemon tests against what `install` left (ARGS: pytest's)
# `make test` runs `install` beside the unit suite and `test` after it; KEEP=1 keeps the DESTDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-.venv}
PY=$REPO/$VENV/bin/python
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
ROOT=${CHECK_ROOT:-$REPO/.check-installed}
DESTDIR=$ROOT/destdir
PREFIX=/opt/dgx-music
W=$DESTDIR$PREFIX/venv
CLI=$W/bin/dgx-music
say() { printf 'check-installed: %s\n' "$*" >&2; }
phase=all
case "${1:-}" in install | test) phase=$1; shift ;; esac

run_tests() {
    [ -x "$CLI" ] || { say "no installed wheel in $DESTDIR: run scripts/check-installed.sh install first"; exit 1; }
    say "daemon tests against the installed console script"
    cd "$REPO"
    DGX_MUSIC_TEST_CLI=$CLI DGX_MUSIC_INSTALLED_ROOT=$DESTDIR "$PY" -m pytest -q -p no:cacheprovider \
        tests/packaging tests/e2e -m "not slow" "$@"
    [ "${KEEP:-0}" = 1 ] || rm -rf "$ROOT/run"
    say "ok: the installed wheel works"
}
if [ "$phase" = test ]; then
    run_tests "$@"
    exit 0
fi

rm -rf "$ROOT/dist" "$ROOT/src" "$ROOT/run" "$DESTDIR/etc"
mkdir -p "$ROOT/dist" "$ROOT/src" "$ROOT/run"
say "building the wheel"
# From a copy of the checkout's files (what git would commit), not in place: setuptools builds in
# ./build, where the suite's own wheel test may be building at the same time under `make test`.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # (a tracked file deleted in the work tree is left out, as git would commit its deletion)
    git ls-files -z --cached --others --exclude-standard \
        | tar -cf - --null --ignore-failed-read -T - 2>/dev/null | tar -xf - -C "$ROOT/src"
    SRC=$ROOT/src
else
    SRC=$REPO
fi
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$ROOT/dist" "$SRC" >/dev/null
rm -rf "$ROOT/src"
WHEEL=$(ls "$ROOT"/dist/dgx_music-*.whl)

# The venv lives where install.sh expects it, so install.sh itself puts the wheel in. Its
# dependencies are kept between runs (torch is large); the project is always reinstalled.
if [ ! -x "$W/bin/python" ]; then
    say "creating $W"
    python3 -m venv "$W"
    "$W/bin/python" -m pip install --quiet --upgrade pip >/dev/null
    "$W/bin/python" -m pip install --quiet "$TORCH_SPEC"
fi
"$W/bin/python" -m pip uninstall --quiet --yes dgx-music >/dev/null 2>&1 || true
# The torch build already there, so install.sh keeps it rather than choosing by this machine's driver.
build=$("$W/bin/python" -c "import torch; v = torch.version.cuda; print('cu' + v.replace('.', '') if v else 'cpu')")
say "systemd/install.sh into $DESTDIR (--torch $build)"
DESTDIR=$DESTDIR ./systemd/install.sh --prefix "$PREFIX" --wheel "$WHEEL" --torch "$build" >"$ROOT/install.log"
direct_url=$("$W/bin/python" -c "import importlib.metadata as m; print(m.distribution('dgx-music').read_text('direct_url.json') or '')")
case "$direct_url" in *'"editable": true'*) say "dgx-music is an editable install: not the wheel"; exit 1 ;; esac

cd "$ROOT/run"   # outside the checkout from here on
say "installed: $("$CLI" --version)"
"$CLI" examples ex >/dev/null
"$CLI" validate ex/*.yaml ex/*.yml >/dev/null
"$CLI" schema >schema.json
cmp -s schema.json ex/job.schema.json || { say "schema of the installed wheel differs from its shipped copy"; exit 1; }
say "demo"
"$CLI" demo --dir demo >demo.log 2>&1 || { tail -30 demo.log; exit 1; }
grep -q "completed" demo.log
grep -q "open file://.*/outbox/index.html in a browser" demo.log || { echo "demo did not print the page URL"; tail -5 demo.log; exit 1; }

say "the fused step's Triton kernels are in the wheel, and their absence is reported, not fatal"
"$W/bin/python" - <<'PY'
import importlib.util

import torch

from daemon.engine.decoding.launches import kernels_problem

assert importlib.util.find_spec("daemon.engine.decoding.kernels") is not None, "kernels.py not in the wheel"
why = kernels_problem(torch.device("cpu"))
if importlib.util.find_spec("triton") is None:
    assert why is not None and why.startswith("Triton is not installed"), why
print("check-installed: kernels:", why or "Triton available")
PY

say "systemd-analyze verify on the installed units"
if command -v systemd-analyze >/dev/null; then
    # verify resolves ExecStart= on this host, where the DESTDIR prefix is part of the path.
    mkdir -p units
    for unit in dgx-music.service dgx-music@.service; do
        sed "s|$PREFIX/venv|$W|g" "$DESTDIR/etc/systemd/system/$unit" >"units/$unit"
    done
    for unit in dgx-music.service dgx-music@.service; do
        out=$( (cd units && systemd-analyze verify --man=no "$PWD/$unit") 2>&1 || true)
        # Backoff keys newer than this systemd are documented as ignored; anything else fails.
        bad=$(printf '%s\n' "$out" | grep -v -E "RestartSteps|RestartMaxDelaySec|^$" || true)
        if [ -n "$bad" ]; then printf '%s\n' "$bad" >&2; exit 1; fi
    done
fi

if [ "$phase" = install ]; then
    say "installed; the daemon tests follow (scripts/check-installed.sh test)"
    exit 0
fi
run_tests "$@"
