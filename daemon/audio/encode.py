"""Audio files: soundfile WAV (PCM_16, PCM_24, FLOAT) and FLAC (PCM_16, PCM_24), written atomically.

The bytes go through `daemon.core.fsio` so a reader never sees a half-written file, and are
hashed as written so the sidecar's sha256 matches what is on disk.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf

from daemon.core.fsio import atomic_writer

AudioFormat = Literal["wav", "flac"]
AudioSubtype = Literal["PCM_16", "PCM_24", "FLOAT"]

FORMATS: dict[str, str] = {"wav": "WAV", "flac": "FLAC"}
SUBTYPES: dict[str, frozenset[str]] = {
    "wav": frozenset({"PCM_16", "PCM_24", "FLOAT"}),
    "flac": frozenset({"PCM_16", "PCM_24"}),  # FLAC is an integer codec
}


@dataclass(frozen=True)
class AudioFileInfo:
    """What was written: the sidecar's `outputs[]` entry minus the loudness figures."""

    path: Path
    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    bytes: int
    sha256: str


def _check(format: str, subtype: str, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    if format not in FORMATS:
        raise ValueError(f"audio format {format!r} is not supported (use one of: {', '.join(FORMATS)})")
    if subtype not in SUBTYPES[format]:
        raise ValueError(
            f"subtype {subtype!r} is not available for {format} "
            f"(use one of: {', '.join(sorted(SUBTYPES[format]))})"
        )
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    x = np.asarray(audio)
    if x.ndim == 1:
        x = x[np.newaxis, :]
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"audio must be [channels, samples], got shape {np.shape(audio)}")
    if x.shape[0] > 8:
        raise ValueError(f"audio shape {x.shape} has {x.shape[0]} channels: pass [channels, samples], not [samples, channels]")
    if not np.all(np.isfinite(x)):
        # NaN/inf means the model or the post-processing broke: never ship it as audio
        raise ValueError("audio contains NaN or infinite samples")
    return x.astype(np.float32, copy=False)


def write_audio(
    path: Path | str,
    audio: np.ndarray,
    sample_rate: int,
    format: AudioFormat = "wav",
    subtype: AudioSubtype = "PCM_16",
    *,
    create_new: bool = False,
) -> AudioFileInfo:
    """Write [channels, samples] float32 audio to `path` atomically and describe the file.

    PCM subtypes are clipped to [-1, 1] first (soundfile would wrap or clip per sample
    otherwise). create_new=True refuses to replace an existing file (FileExistsError).
    """
    path = Path(path)
    x = _check(format, subtype, audio, sample_rate)
    if subtype != "FLOAT":
        x = np.clip(x, -1.0, 1.0)
    channels, frames = x.shape
    # Encode in memory, then write the bytes ourselves: libsndfile's virtual-I/O callbacks
    # swallow write errors, so ENOSPC would surface as a truncated file instead of an OSError.
    buf = io.BytesIO()
    with sf.SoundFile(
        buf, mode="w", samplerate=int(sample_rate), channels=channels, format=FORMATS[format], subtype=subtype
    ) as snd:
        snd.write(np.ascontiguousarray(x.T))
    data = buf.getbuffer()
    with atomic_writer(path, create_new=create_new) as fh:
        fh.write(data)
    size = len(data)
    digest = hashlib.sha256(data)
    return AudioFileInfo(
        path=path,
        format=format,
        subtype=subtype,
        sample_rate=int(sample_rate),
        channels=channels,
        frames=frames,
        duration_s=frames / float(sample_rate),
        bytes=size,
        sha256=digest.hexdigest(),
    )


def read_audio(path: Path | str) -> tuple[np.ndarray, int]:
    """Read a file back as ([channels, samples] float32, sample_rate): the inverse of write_audio."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(sr)
