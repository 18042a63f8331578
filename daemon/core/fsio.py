"""Crash-safe file writes: a reader sees the old file, or the whole new one, never a part.

Data goes to `.<name>.<random>.tmp` in the target's directory (same filesystem, and a
dot-name the spool never reads), is flushed and fsynced, renamed onto the target, and the
directory is fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


def temp_name_for(path: Path) -> Path:
    """A fresh dot-temp sibling of `path` (hidden from the spool's inbox scan)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def fsync_dir(directory: Path) -> None:
    """fsync a directory so entries renamed into it are durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}


def _publish(tmp: Path, path: Path, create_new: bool) -> None:
    if not create_new:
        os.replace(tmp, path)
        return
    try:
        # link() fails with EEXIST instead of replacing: the no-clobber rename
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "already exists (refusing to overwrite)", str(path)) from None
    except OSError as exc:
        if exc.errno not in _NO_HARDLINKS:
            raise
        # Filesystems without hard links (some FUSE/SMB mounts): check, then rename.
        # A racing writer could slip in between; the spool's claim protocol makes that moot.
        if path.exists():
            raise FileExistsError(errno.EEXIST, "already exists (refusing to overwrite)", str(path)) from None
        os.rename(tmp, path)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_writer(path: Path | str, *, create_new: bool = False, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file object; on clean exit its bytes appear at `path` atomically.

    The file is open read-write (a writer may seek back to hash what it wrote).

    create_new=True refuses to replace an existing `path` (FileExistsError), even one that
    appears while we write. On any exception the temp file is removed and `path` is
    untouched. `mode` is set explicitly on the new file (the umask does not apply).
    """
    path = Path(path)
    directory = path.parent
    if create_new and path.exists():
        raise FileExistsError(errno.EEXIST, "already exists (refusing to overwrite)", str(path))
    tmp = temp_name_for(path)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    published = False
    try:
        with os.fdopen(fd, "w+b") as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        _publish(tmp, path, create_new)
        published = True
        fsync_dir(directory)
    finally:
        if not published:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def atomic_write_bytes(path: Path | str, data: bytes, *, create_new: bool = False, mode: int = 0o644) -> Path:
    """Write `data` to `path` atomically (see atomic_writer); returns the path."""
    with atomic_writer(path, create_new=create_new, mode=mode) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: Path | str, text: str, *, create_new: bool = False, mode: int = 0o644) -> Path:
    """UTF-8 text variant of atomic_write_bytes (sidecars)."""
    return atomic_write_bytes(path, text.encode("utf-8"), create_new=create_new, mode=mode)
