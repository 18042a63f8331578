"""The daemon's malloc setting, proved by what it changes: after a large block has been freed, the
next one is still mapped on its own, outside the heap, and leaves the resident set when freed,
where glibc's sliding threshold would put it in the heap and keep it resident. Each case runs in a
fresh interpreter, since the threshold is the process's for good."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# One 8 MiB block is allocated and freed to move glibc's threshold (its default slides up to the
# freed size), then another is allocated and touched: prints the settle message, whether that block
# lies in the heap (/proc/self/maps), and how far the resident set stays above its level before
# once it is freed.
PROBE = """
import ctypes, sys
from pathlib import Path
from daemon.service.allocator import settle_malloc

def rss_kib():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1])

said = settle_malloc() if sys.argv[1] == "settle" else "glibc's defaults"
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 8 << 20
libc.free(libc.malloc(size))
before = rss_kib()
block = libc.malloc(size)
ctypes.memset(block, 1, size)
heap = next(x for x in Path("/proc/self/maps").read_text().splitlines() if x.endswith("[heap]"))
lo, hi = (int(a, 16) for a in heap.split()[0].split("-"))
in_heap = lo <= block < hi
libc.free(block)
print(said, "|", in_heap, "|", rss_kib() - before)
"""


def _probe(mode: str, **env: str) -> tuple[str, bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    ).stdout
    said, in_heap, kept = out.rsplit("|", 2)
    return said.strip(), in_heap.strip() == "True", int(kept)


def test_a_freed_large_block_leaves_the_resident_set_once_the_threshold_is_fixed() -> None:
    said, in_heap, kept_kib = _probe("settle")
    assert said == "mmap threshold fixed at 1024 KiB"
    assert not in_heap and kept_kib < 1024
    # The same steps under glibc's sliding threshold keep the block resident: the probe can tell.
    said, in_heap, kept_kib = _probe("defaults")
    assert in_heap and kept_kib >= 6 * 1024, said


def test_a_threshold_from_the_environment_is_left_as_it_is() -> None:
    said, in_heap, _ = _probe("settle", MALLOC_MMAP_THRESHOLD_=str(32 << 20))
    assert said == "mmap threshold as the environment sets it"
    assert in_heap  # under the environment's 32 MiB an 8 MiB block is the heap's: nothing undid it
