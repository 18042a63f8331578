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
from pathlib import Path

import numpy as np
import soundfile as sf
from pydantic_core import PydanticCustomError

from daemon.core.config import Settings
from daemon.core.errors import InvalidJobError
from daemon.spool.nofollow import LinkRefused, open_below
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


# What a reference may be, checked from its header before a single sample is decoded, and again
# while decoding (a header may lie): at most REFERENCE_CHANNELS channels at REFERENCE_RATES, and
# never more samples than `max_reference_s` of 48 kHz stereo, so the decoded audio the daemon holds
# is bounded by its settings whatever the file claims (a 400 KiB FLAC of silence decodes to GBs).
REFERENCE_RATES = (1000, 192_000)
REFERENCE_CHANNELS = 8
BUDGET_RATE = 48_000
BUDGET_CHANNELS = 2
BLOCK_FRAMES = 65_536
# libsndfile's frame count for a stream that does not say its length (e.g. FLAC from a pipe).
_UNKNOWN_FRAMES = 2**62


def _sample_budget(settings: Settings) -> int:
    """Most samples (frames x channels) a reference may decode to."""
    return int(settings.max_reference_s * BUDGET_RATE * BUDGET_CHANNELS)


def _decode_bounded(
    settings: Settings, data: bytes, ref: str, loc: str, line: int | None
) -> tuple[np.ndarray, int]:
    """[frames, channels] float32 and the rate, decoded in blocks into a buffer no larger than the
    limits allow; refused from the header when it says too much, or as soon as the decoded audio
    passes what the limits allow (a header that claims less than the file holds)."""
    limit_s = settings.max_reference_s
    try:
        fh = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _refuse(
            ref,
            loc,
            line,
            f"is not audio soundfile can read ({exc})",
            "use wav, flac, ogg (vorbis/opus) or mp3",
        ) from None
    with fh:
        rate, channels, declared = int(fh.samplerate), int(fh.channels), int(fh.frames)
        if not REFERENCE_RATES[0] <= rate <= REFERENCE_RATES[1]:
            raise _refuse(
                ref,
                loc,
                line,
                f"has a sample rate of {rate} Hz; references must have "
                f"{REFERENCE_RATES[0]}-{REFERENCE_RATES[1]} Hz",
                "export it again at 32, 44.1 or 48 kHz",
            )
        if not 1 <= channels <= REFERENCE_CHANNELS:
            raise _refuse(
                ref,
                loc,
                line,
                f"has {channels} channels; references have 1 to {REFERENCE_CHANNELS}",
                "mix it down to stereo or mono",
            )
        # The longest this file may be: max_reference_s, and fewer seconds at high rates or many
        # channels, so that it never decodes to more than the sample budget.
        cap = min(int(limit_s * rate), _sample_budget(settings) // channels)
        limited = f"references are limited to {limit_s:g} s"
        if cap < int(limit_s * rate):
            limited = (
                f"references at {rate} Hz x {channels} channels are limited to {cap / rate:.1f} s "
                f"(at most max_reference_s = {limit_s:g} s of 48 kHz stereo are held in memory)"
            )
        hint = "trim it (or resample it to 48 kHz stereo), or ask the operator to raise max_reference_s"
        if 0 < declared < _UNKNOWN_FRAMES and declared > cap:
            raise _refuse(ref, loc, line, f"is {declared / rate:.1f} s long; {limited}", hint)
        # np.empty reserves address space only: memory is touched as blocks are decoded into it.
        buf = np.empty((cap + 1, channels), dtype=np.float32)
        n = 0
        try:
            while n <= cap:
                got = fh.read(out=buf[n : n + min(BLOCK_FRAMES, cap + 1 - n)])
                if len(got) == 0:
                    break
                n += len(got)
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise _refuse(
                ref, loc, line, f"cannot be decoded ({exc})", "export it again as wav, flac, ogg or mp3"
            ) from None
    if n > cap:
        said = "does not say its length" if declared >= _UNKNOWN_FRAMES else "says less than it holds"
        raise _refuse(ref, loc, line, f"is longer than its header says (it {said}); {limited}", hint)
    if n == 0:
        raise _refuse(ref, loc, line, "holds no audio (0 samples)", "name a file with some sound in it")
    return buf[:n], rate


def _open_reference(spool_root: Path, parts: list[str]) -> int:
    """A descriptor of the regular file `parts` below the spool root, no link followed on the way."""
    with open_below(spool_root, parts[:-1]) as folder:
        return folder.open_file(parts[-1])


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
        fd = _open_reference(spool_root, parts)
    except FileNotFoundError:
        raise _refuse(ref, loc, line, f"does not exist in {where}", missing_hint) from None
    except LinkRefused:
        raise _refuse(
            ref,
            loc,
            line,
            "is, or lies below, a symbolic link",
            "copy the audio into " + where + " instead of linking it",
        ) from None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise _refuse(
                ref,
                loc,
                line,
                "cannot be read by the daemon",
                "make it readable by the dgx-music group (chmod g+r FILE)",
            ) from None
        if exc.errno == errno.EINVAL:
            raise _refuse(
                ref, loc, line, "is not a regular file", "name an audio file (wav, flac, ogg or mp3)"
            ) from None
        raise _refuse(ref, loc, line, f"cannot be opened: {exc.strerror}", missing_hint) from None
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
    snd, rate = _decode_bounded(settings, data, ref, loc, line)
    frames, channels = snd.shape
    duration = frames / float(rate)
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
