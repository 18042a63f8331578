"""Audio files through soundfile/libsndfile, written atomically, with metadata tags.

wav (PCM_16, PCM_24, FLOAT) and flac (PCM_16, PCM_24) are lossless; mp3 (MPEG layer III, VBR)
and ogg (Vorbis, or Opus at 48 kHz: Opus knows no 32 kHz) are small previews whose size is set
by a quality 0..1. Every format carries the tags libsndfile can store in it (title, comment,
software, date). The bytes go through `daemon.core.fsio` so a reader never sees a half-written
file, are hashed as written so the sidecar's sha256 matches what is on disk, and are decoded
back, so loudness can be measured on what a listener gets rather than on what went in.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from daemon.audio.musictags import MusicTags, add_music_tags
from daemon.core.fsio import atomic_writer

AudioFormat = Literal["wav", "flac", "mp3", "ogg"]
AudioSubtype = Literal["PCM_16", "PCM_24", "FLOAT"]
OggCodec = Literal["vorbis", "opus"]

FORMATS: dict[str, str] = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "OGG"}
SUBTYPES: dict[str, frozenset[str]] = {
    "wav": frozenset({"PCM_16", "PCM_24", "FLOAT"}),
    "flac": frozenset({"PCM_16", "PCM_24"}),  # FLAC is an integer codec
}
LOSSY = frozenset({"mp3", "ogg"})
CODEC_SUBTYPES: dict[str, str] = {"mp3": "MPEG_LAYER_III", "vorbis": "VORBIS", "opus": "OPUS"}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
DEFAULT_QUALITY = 0.6
# The tags libsndfile stores (SF_STR_*); which of them a container keeps is the container's business.
TAG_KEYS = ("title", "comment", "software", "date", "artist", "album", "genre")


def encoded_subtype(format: str, subtype: str, codec: str | None) -> str:
    """The libsndfile subtype a file of this format ends up with (the sidecar's `subtype`)."""
    if format == "mp3":
        return CODEC_SUBTYPES["mp3"]
    if format == "ogg":
        return CODEC_SUBTYPES[codec or "vorbis"]
    return subtype


def _encoder_rate(format: str, codec: str | None, sample_rate: int) -> int:
    if format == "ogg" and codec == "opus" and sample_rate not in OPUS_RATES:
        return 48000
    return sample_rate


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return x
    g = math.gcd(src, dst)
    return resample_poly(x, dst // g, src // g, axis=-1).astype(np.float32)


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
    tags: dict[str, str] = field(default_factory=dict)
    quality: float | None = None
    # The file decoded again, [channels, samples] float32: what loudness is measured on.
    decoded: np.ndarray | None = field(default=None, repr=False, compare=False)


def _check(format: str, subtype: str, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    if format not in FORMATS:
        raise ValueError(f"audio format {format!r} is not supported (use one of: {', '.join(FORMATS)})")
    if format not in LOSSY and subtype not in SUBTYPES[format]:
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
        raise ValueError(
            f"audio shape {x.shape} has {x.shape[0]} channels: "
            "pass [channels, samples], not [samples, channels]"
        )
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
    codec: OggCodec | None = None,
    quality: float | None = None,
    tags: Mapping[str, str] | None = None,
    music: MusicTags | None = None,
) -> AudioFileInfo:
    """Write [channels, samples] float32 audio to `path` atomically and describe the file.

    PCM subtypes are clipped to [-1, 1] first (soundfile would wrap or clip per sample
    otherwise); lossy formats are clipped too (their encoders would). create_new=True refuses
    to replace an existing file (FileExistsError). `codec` (ogg: vorbis|opus) and `quality`
    (0..1, 1 best) apply to mp3/ogg only. `tags`: keys from TAG_KEYS. `music`: tempo and key
    written where the container has fields for them (daemon.audio.musictags).
    """
    path = Path(path)
    x = _check(format, subtype, audio, sample_rate)
    if format in LOSSY:
        if codec is not None and format != "ogg":
            raise ValueError(f"codec {codec!r} applies to ogg only, not {format}")
        if format == "ogg" and codec is not None and codec not in ("vorbis", "opus"):
            raise ValueError(f"ogg codec {codec!r} is not supported (use vorbis or opus)")
        q = DEFAULT_QUALITY if quality is None else float(quality)
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quality must be 0..1, got {quality!r}")
    elif codec is not None or quality is not None:
        raise ValueError(f"codec and quality apply to mp3 and ogg, not {format}")
    bad_tags = sorted(set(tags or {}) - set(TAG_KEYS))
    if bad_tags:
        raise ValueError(f"unknown tag(s) {', '.join(bad_tags)} (use: {', '.join(TAG_KEYS)})")
    if subtype != "FLOAT" or format in LOSSY:
        x = np.clip(x, -1.0, 1.0)
    rate = _encoder_rate(format, codec, int(sample_rate))
    x = _resample(x, int(sample_rate), rate)
    channels = x.shape[0]
    sub = encoded_subtype(format, subtype, codec)
    options: dict[str, object] = {}
    if format in LOSSY:
        # libsndfile's compression level is the inverse of quality; 1.0 is refused by its MP3 encoder.
        options["compression_level"] = min(0.99, 1.0 - q)
        if format == "mp3":
            options["bitrate_mode"] = "VARIABLE"
    # Encode in memory, then write the bytes ourselves: libsndfile's virtual-I/O callbacks
    # swallow write errors, so ENOSPC would surface as a truncated file instead of an OSError.
    buf = io.BytesIO()
    written_tags = {k: v for k, v in (tags or {}).items() if v}
    with sf.SoundFile(
        buf, mode="w", samplerate=rate, channels=channels, format=FORMATS[format], subtype=sub, **options
    ) as snd:
        for key, value in written_tags.items():
            setattr(snd, key, value)
        snd.write(np.ascontiguousarray(x.T))
    data = add_music_tags(buf.getvalue(), format, music)
    decoded, back_rate = read_audio_bytes(data)
    if back_rate != rate or decoded.shape[0] != channels:
        raise ValueError(
            f"{format} file reads back as {decoded.shape[0]} ch at {back_rate} Hz, wrote {channels} at {rate}"
        )
    with atomic_writer(path, create_new=create_new) as fh:
        fh.write(data)
    frames = decoded.shape[1] if format in LOSSY else x.shape[1]
    return AudioFileInfo(
        path=path,
        format=format,
        subtype=sub,
        sample_rate=rate,
        channels=channels,
        frames=frames,
        duration_s=frames / float(rate),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        tags=written_tags,
        quality=q if format in LOSSY else None,
        decoded=decoded,
    )


def read_audio_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a file's bytes ([channels, samples] float32, sample_rate)."""
    snd, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return np.ascontiguousarray(snd.T), int(sr)


def read_audio(path: Path | str) -> tuple[np.ndarray, int]:
    """Read a file back as ([channels, samples] float32, sample_rate): the inverse of write_audio."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(sr)
