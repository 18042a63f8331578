"""Reference audio: from a job's `library/<file>` or `outbox/<file>` to checked samples.

Submitters write library/ (and choose what a job names), so a reference is treated like any
other user input that names a file: the textual rule of jobspec.names first, then the file is
opened one directory at a time below the spool with O_NOFOLLOW (no symlink anywhere, the spool
root excepted: that is the operator's), checked to be a regular file with a single link (a hard
link could be any file on the filesystem) inside the spool (resolve + is_relative_to, as a second
fence), under the size limit, and decodable by soundfile (wav, flac, ogg, mp3) under the duration
limit. The bytes read are the bytes hashed and decoded, so the sidecar's sha256 is of the audio
that was used. Nothing here writes: library/ is never modified.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
from pydantic_core import PydanticCustomError

from daemon.core.config import Settings
from daemon.core.errors import InvalidJobError
from jobspec.names import REFERENCE_HINT, check_reference


@dataclass(frozen=True)
class ReferenceAudio:
    """A reference as read when the job ran: facts for the sidecar and the samples."""

    role: str
    path: str
    sha256: str
    duration_s: float
    sample_rate: int
    channels: int
    samples: np.ndarray = field(repr=False, compare=False)  # [channels, frames] float32

    def sidecar_fields(self) -> dict[str, object]:
        return {
            "role": self.role,
            "path": self.path,
            "sha256": self.sha256,
            "duration_s": round(self.duration_s, 6),
            "sample_rate": self.sample_rate,
            "channels": self.channels,
        }


def _refuse(ref: str, loc: str, line: int | None, why: str, hint: str) -> InvalidJobError:
    return InvalidJobError(f"{ref!r} {why}", loc=loc, line=line, hint=hint)


def _open_below(root_fd: int, parts: list[str]) -> int:
    """Open `parts` below the directory `root_fd`, refusing a symlink at any step."""
    fd = root_fd
    opened: list[int] = []
    try:
        for part in parts[:-1]:
            fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            opened.append(fd)
        # O_NONBLOCK: a FIFO planted under the name must not hang the worker in open().
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    finally:
        for d in opened:
            os.close(d)


def resolve_reference(
    settings: Settings, role: str, ref: str, *, loc: str | None = None, line: int | None = None
) -> ReferenceAudio:
    """Read the reference `ref` of a job (role continue_from or melody). Raises InvalidJobError."""
    loc = loc or role
    try:
        check_reference(ref)
    except PydanticCustomError as exc:
        raise InvalidJobError(exc.message(), loc=loc, line=line, hint=REFERENCE_HINT) from None
    parts = ref.split("/")
    where = "library/" if parts[0] == "library" else "outbox/"
    missing_hint = (
        "copy the file into the spool's library/ first (it is read, never changed or removed)"
        if parts[0] == "library"
        else "name a result that is in outbox/ (its sidecar <id>.json is written after the audio)"
    )
    spool_root = settings.spool.resolve()
    # The second fence: whatever the walk below allowed must still resolve inside the spool.
    if not (settings.spool / ref).resolve().is_relative_to(spool_root / parts[0]):
        raise _refuse(
            ref,
            loc,
            line,
            "leads out of the spool's " + where,
            "references must be files inside " + where + "; symlinks are not followed",
        )
    try:
        root_fd = os.open(spool_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidJobError(
            f"the spool cannot be read: {exc.strerror}",
            loc=loc,
            line=line,
            hint="check the spool's permissions",
        ) from None
    try:
        try:
            fd = _open_below(root_fd, parts)
        except FileNotFoundError:
            raise _refuse(ref, loc, line, f"does not exist in {where}", missing_hint) from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _refuse(
                    ref,
                    loc,
                    line,
                    "is, or lies below, a symbolic link",
                    "copy the audio into " + where + " instead of linking it",
                ) from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise _refuse(
                    ref,
                    loc,
                    line,
                    "cannot be read by the daemon",
                    "make it readable by the dgx-music group (chmod g+r FILE)",
                ) from None
            raise _refuse(ref, loc, line, f"cannot be opened: {exc.strerror}", missing_hint) from None
    finally:
        os.close(root_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _refuse(ref, loc, line, "is not a regular file", "name an audio file (wav, flac, ogg or mp3)")
    with os.fdopen(fd, "rb") as fh:
        if st.st_nlink > 1:
            raise _refuse(
                ref,
                loc,
                line,
                f"has {st.st_nlink} hard links; a linked file could be any file on this filesystem",
                "copy the audio into " + where + " instead of linking it",
            )
        limit = settings.max_reference_bytes
        if st.st_size > limit:
            raise _refuse(
                ref,
                loc,
                line,
                f"is {st.st_size} bytes; references are limited to {limit} bytes",
                "trim or compress it (flac, ogg), or ask the operator to raise max_reference_bytes",
            )
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise _refuse(
            ref,
            loc,
            line,
            f"grew past {limit} bytes while it was read",
            "write the file elsewhere and move it into place when complete",
        )
    try:
        snd, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _refuse(
            ref,
            loc,
            line,
            f"is not audio soundfile can read ({exc})",
            "use wav, flac, ogg (vorbis/opus) or mp3",
        ) from None
    frames, channels = snd.shape
    if frames == 0:
        raise _refuse(ref, loc, line, "holds no audio (0 samples)", "name a file with some sound in it")
    duration = frames / float(rate)
    if duration > settings.max_reference_s:
        raise _refuse(
            ref,
            loc,
            line,
            f"is {duration:.1f} s long; references are limited to {settings.max_reference_s:g} s",
            "trim it, or ask the operator to raise max_reference_s",
        )
    samples = np.ascontiguousarray(snd.T)
    if not np.isfinite(samples).all():
        raise _refuse(ref, loc, line, "contains NaN or infinite samples", "export it again as PCM audio")
    return ReferenceAudio(
        role=role,
        path=ref,
        sha256=hashlib.sha256(data).hexdigest(),
        duration_s=duration,
        sample_rate=int(rate),
        channels=int(channels),
        samples=samples,
    )
