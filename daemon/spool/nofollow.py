"""The one rule for every walk below the spool: no symbolic link is followed, at any path component.

Submitters may write inbox/ and library/, so any name below the spool root may be swapped for a
link at any moment, also between a check and the use that follows it. A path (`lstat(p)` then
`rename(p)`) is resolved again by each call, so a check by path proves nothing about the use.
Instead each folder is opened once, with O_DIRECTORY|O_NOFOLLOW, relative to its parent's
descriptor, and every later step (list, stat, open, rename, link, unlink) names an entry relative
to that descriptor: whatever happens to the names afterwards, the steps act on the folder that was
checked. The spool root and its top folders (inbox/, outbox/, ...) are the operator's and may be
links (a mounted volume); everything below them is not.

Every reader uses this module: the claim and the inbox scan, `cancel` (withdraw), retention, the
page's and recovery's lists of result folders, and references to library/ and outbox/ audio.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a file's name must not hang the reader in open().
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# What opening a name with O_NOFOLLOW reports when the name (or, for a directory, its target) is
# a symbolic link or not a directory.
LINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR)


class LinkRefused(OSError):
    """A name below the spool is a symbolic link, or no longer a directory: it is not followed."""


def is_link_error(exc: OSError) -> bool:
    return exc.errno in LINK_ERRNOS


class Dir:
    """An open directory: every operation names an entry relative to its descriptor."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path  # for messages and for callers that report paths; never re-resolved here

    @classmethod
    def root(cls, path: Path) -> "Dir":
        """Open one of the operator's folders (the spool root, inbox/, outbox/ ...): may be a link."""
        return cls(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), path)

    def sub(self, name: str) -> "Dir":
        """Open the folder `name` inside this one; LinkRefused when it is a link or not a folder."""
        _check_name(name)
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if is_link_error(exc):
                raise LinkRefused(
                    exc.errno, "is a symbolic link or not a directory", str(self.path / name)
                ) from None
            raise
        return Dir(fd, self.path / name)

    def walk(self, parts: list[str]) -> "Dir":
        """Open the folders `parts` below this one, one at a time, none followed if a link."""
        current = self
        try:
            for part in parts:
                nxt = current.sub(part)
                if current is not self:
                    current.close()
                current = nxt
        except BaseException:
            if current is not self:
                current.close()
            raise
        return current if current is not self else Dir(os.dup(self.fd), self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Dir":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- entries

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def entries(self) -> Iterator[tuple[str, os.stat_result]]:
        """(name, lstat) of each entry; entries that vanish while listed are skipped."""
        for name in self.names():
            try:
                yield name, self.lstat(name)
            except FileNotFoundError:
                continue

    def lstat(self, name: str) -> os.stat_result:
        _check_name(name)
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def exists(self, name: str) -> bool:
        try:
            self.lstat(name)
        except FileNotFoundError:
            return False
        return True

    def open_file(self, name: str) -> int:
        """A read-only descriptor of the regular file `name`; LinkRefused for a link, OSError for
        anything that is not a regular file (FIFO, device, socket, folder)."""
        _check_name(name)
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LinkRefused(exc.errno, "is a symbolic link", str(self.path / name)) from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", str(self.path / name))
        os.set_blocking(fd, True)
        return fd

    def read_bytes(self, name: str, limit: int) -> bytes:
        """At most `limit` bytes of the regular file `name` (never through a link)."""
        with os.fdopen(self.open_file(name), "rb") as fh:
            return fh.read(limit)

    def rename(self, name: str, dst: "Dir", dst_name: str) -> None:
        _check_name(name)
        _check_name(dst_name)
        os.rename(name, dst_name, src_dir_fd=self.fd, dst_dir_fd=dst.fd)

    def link(self, name: str, dst: "Dir", dst_name: str) -> None:
        _check_name(name)
        _check_name(dst_name)
        os.link(name, dst_name, src_dir_fd=self.fd, dst_dir_fd=dst.fd, follow_symlinks=False)

    def unlink(self, name: str) -> None:
        _check_name(name)
        os.unlink(name, dir_fd=self.fd)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def same_as(self, other: "Dir") -> bool:
        a, b = os.fstat(self.fd), os.fstat(other.fd)
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _check_name(name: str) -> None:
    # One component only: a '/' would make the kernel walk (and follow) further names.
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a single file name")


def open_below(root: Path, parts: list[str]) -> Dir:
    """The folder `root/parts[0]/parts[1]/...`: `root` may be a link (the operator's), no part may."""
    with Dir.root(root) as top:
        return top.walk(parts)


def subfolders(root: Path) -> list[str]:
    """Names of the real folders (not links, not dot-folders) directly inside `root`."""
    try:
        with Dir.root(root) as top:
            return sorted(
                name for name, st in top.entries() if not name.startswith(".") and stat.S_ISDIR(st.st_mode)
            )
    except OSError:
        return []
