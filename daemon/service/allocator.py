"""glibc's malloc, settled for a process that lives for weeks and frees large blocks after every job.

glibc maps a block of at least its mmap threshold on its own and unmaps it when freed. By default
the threshold starts at 128 KiB and rises to the size of each large block freed, up to 32 MiB, so
after the first job the codec's activations (a few MiB to 32 MiB each, per 5 s window) come from
the heap instead and stay there once freed: on the CPU a few hundred MiB held between jobs, a
different amount every run (`benchmarks/memory_by_duration.py`: one job's peak moved by up to
60 % between runs; 8 MiB still let it move by a tenth). Fixed at 1 MiB, runs of one job agree to
the MiB. The daemon sets it at start, whoever launched it (systemd, Slurm, a shell); a threshold
the environment gives glibc (`MALLOC_MMAP_THRESHOLD_`, `GLIBC_TUNABLES`) is left as it is.
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's <malloc.h>


def settle_malloc(threshold: int = MMAP_THRESHOLD) -> str:
    """Fix glibc's mmap threshold at `threshold` bytes; what was done, for the log."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "malloc.mmap_threshold" in tunables:
        return "mmap threshold as the environment sets it"
    if platform.libc_ver()[0] != "glibc":
        return "not glibc: its allocator left as it is"
    if ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, threshold) != 1:
        return f"glibc refused an mmap threshold of {threshold} bytes: left sliding"
    return f"mmap threshold fixed at {threshold >> 10} KiB"
