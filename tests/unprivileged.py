"""Run a check without the power to bypass file permissions, also as root.

CI runs as root, and root reads and writes any file: the tests of unreadable and unwritable
paths would prove nothing there. Instead of skipping, they run their body in a forked child
that, as root, drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (capget/capset on that thread,
the only one a forked child has), so the permission bits apply to it as to the daemon's user.
"""

from __future__ import annotations

import ctypes
import os
import traceback
from collections.abc import Callable

_CAPABILITY_VERSION_3 = 0x20080522
_DAC = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH (both in the first 32 bits)


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_file_override() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    header = _Header(_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for field in ("effective", "permitted", "inheritable"):
        setattr(data[0], field, getattr(data[0], field) & ~_DAC & 0xFFFFFFFF)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def run_unprivileged(check: Callable[[], object]) -> None:
    """`check()` where file permissions bind: here when not root, else in a forked child without
    the override capabilities. A failure in the child is raised here with its traceback."""
    if os.geteuid() != 0:
        check()
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        code = 0
        try:
            _drop_file_override()
            check()
        except BaseException:
            os.write(write_end, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        failure = pipe.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the unprivileged check failed:\n{failure}"
