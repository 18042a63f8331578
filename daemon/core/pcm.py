"""A clip of float32 audio [channels, samples] kept in a temporary file, read and written in blocks.

The engine appends each row's audio window by window as the codec (or a VAE) produces it, and the
audio stage reads it back a block at a time, so neither holds a whole piece: what a job costs in
memory is a few windows, whatever its duration and count. The file is unlinked from the start
(O_TMPFILE where the filesystem has it): it vanishes when closed, or with the process. Blocks are
read with plain reads, not a memory map, so a pass over the clip leaves no pages in the process.

Put it on a disk-backed directory (the spool's state/): on a tmpfs the bytes would be memory again.
Where the disk is full, a clip keeps its bytes in memory instead (logged): a full disk must not lose
a job, and the outbox write that follows is retried until there is room.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

import numpy as np


class Clip(Protocol):
    """Audio [channels, samples] float32 read a range at a time: a `Pcm`, or a file being measured
    (`daemon.audio.encode.FileClip`). What the streaming audio passes take."""

    @property
    def channels(self) -> int: ...

    @property
    def samples(self) -> int: ...

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray: ...


log = logging.getLogger(__name__)

_ITEM = np.dtype(np.float32).itemsize

BLOCK_SAMPLES = 1 << 18
"""Samples per channel a pass over a clip reads at a time (8 s at 32 kHz: 1 MiB per channel)."""


class Pcm:
    """float32 audio [channels, samples] in an unlinked temporary file, interleaved by sample."""

    def __init__(self, channels: int, directory: Path | str | None = None) -> None:
        if channels < 1:
            raise ValueError(f"a clip needs at least one channel, got {channels}")
        self.channels = int(channels)
        # A directory that does not exist (no spool: tools, tests) falls back to the system's.
        self.directory = None if directory is None or not Path(directory).is_dir() else Path(directory)
        self._file: IO[bytes] | None = None
        self._memory: bytearray | None = None  # the bytes, once the disk refused them
        self._samples = 0
        try:
            self._file = tempfile.TemporaryFile(dir=self.directory, prefix=".pcm-")
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("no room for audio in %s (%s): keeping it in memory", self.directory, exc)
            self._memory = bytearray()

    @classmethod
    def from_array(cls, audio: np.ndarray, directory: Path | str | None = None) -> Pcm:
        """A clip holding `audio` ([channels, samples] or [samples])."""
        x = np.asarray(audio, dtype=np.float32)
        x = x[np.newaxis, :] if x.ndim == 1 else x
        pcm = cls(x.shape[0], directory)
        for start in range(0, x.shape[1], BLOCK_SAMPLES):
            pcm.append(x[:, start : start + BLOCK_SAMPLES])
        return pcm

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def shape(self) -> tuple[int, int]:
        return (self.channels, self._samples)

    def append(self, block: np.ndarray) -> None:
        """Add `block` ([channels, n]) at the end."""
        x = np.asarray(block, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != self.channels:
            raise ValueError(f"a block must be [{self.channels}, samples], got shape {x.shape}")
        data = np.ascontiguousarray(x.T).tobytes()
        at = self._samples * self.channels * _ITEM
        if self._file is not None:
            try:
                written = os.pwrite(self._file.fileno(), data, at)
                if written != len(data):
                    raise OSError(errno.ENOSPC, "short write")
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self._to_memory(exc)
        if self._memory is not None:
            del self._memory[at:]
            self._memory += data
        self._samples += x.shape[1]

    def _to_memory(self, exc: OSError) -> None:
        """A full disk must not lose a job: its audio stays in memory instead (the outbox write
        that follows fails the same way and is retried until there is room)."""
        assert self._file is not None
        log.warning(
            "no room for audio in %s (%s): keeping it in memory", self.directory or "the temp dir", exc
        )
        size = self._samples * self.channels * _ITEM
        self._memory = bytearray(os.pread(self._file.fileno(), size, 0))
        self._file.close()
        self._file = None

    def fit(self, samples: int) -> None:
        """Cut to, or pad with silence up to, exactly `samples`."""
        size = samples * self.channels * _ITEM
        if self._memory is not None:
            self._memory[size:] = b""
            self._memory += bytes(size - len(self._memory))
        else:
            assert self._file is not None
            try:
                os.ftruncate(self._file.fileno(), size)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self._to_memory(exc)
                self.fit(samples)
        self._samples = samples

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples [start, stop) as a new array [channels, n] (bounds are clamped to the clip)."""
        stop = self._samples if stop is None else min(stop, self._samples)
        start = max(0, min(start, stop))
        size, at = (stop - start) * self.channels * _ITEM, start * self.channels * _ITEM
        if self._memory is not None:
            data = bytes(self._memory[at : at + size])
        else:
            assert self._file is not None
            data = os.pread(self._file.fileno(), size, at) if size else b""
        if len(data) != size:
            raise OSError(f"short read from an audio temp file: {len(data)} of {size} bytes")
        frames = np.frombuffer(data, dtype=np.float32).reshape(stop - start, self.channels)
        return np.ascontiguousarray(frames.T)

    def blocks(self, size: int = BLOCK_SAMPLES) -> Iterator[tuple[int, np.ndarray]]:
        """(start, block [channels, n]) over the whole clip, `size` samples at a time."""
        for start in range(0, self._samples, size):
            yield start, self.read(start, start + size)

    def array(self) -> np.ndarray:
        """The whole clip in memory: for what needs all of it (loops, short clips, tests)."""
        return self.read()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._memory = None

    def __del__(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()

    def __repr__(self) -> str:
        return f"Pcm(channels={self.channels}, samples={self._samples})"


class ArrayClip:
    """An array [channels, samples] (or [samples]) in memory as a `Clip`."""

    def __init__(self, audio: np.ndarray) -> None:
        x = np.asarray(audio, dtype=np.float32)
        self._x = x[np.newaxis, :] if x.ndim == 1 else x
        self.channels, self.samples = self._x.shape

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._x[:, start:stop]
