"""Audio files through soundfile/libsndfile, written atomically, with metadata tags.

wav (PCM_16, PCM_24, FLOAT) and flac (PCM_16, PCM_24) are lossless; mp3 (MPEG layer III, VBR)
and ogg (Vorbis, or Opus at 48 kHz: Opus knows no 32 kHz) are small previews whose size is set
by a quality 0..1. Every format carries the tags libsndfile can store in it (title, comment,
software, date), and tempo, key and lyrics where its container has fields for them. The bytes go
through `daemon.core.fsio` so a reader never sees a half-written file, are hashed as written so
the sidecar's sha256 matches what is on disk, and are decoded back, so loudness can be measured
on what a listener gets rather than on what went in.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from daemon.audio.musictags import MusicTags, SongText, tag_file
from daemon.core.fsio import atomic_writer
from daemon.core.pcm import Clip

AudioFormat = Literal["wav", "flac", "mp3", "ogg"]
AudioSubtype = Literal["PCM_16", "PCM_24", "FLOAT"]
OggCodec = Literal["vorbis", "opus"]

FORMATS: dict[str, str] = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "OGG"}
SUBTYPES: dict[str, frozenset[str]] = {
    "wav": frozenset({"PCM_16", "PCM_24", "FLOAT"}),
    "flac": frozenset({"PCM_16", "PCM_24"}),  # FLAC is an integer codec
}
LOSSY = frozenset({"mp3", "ogg"})
LOSSY_FORMATS = frozenset(FORMATS[f] for f in LOSSY)  # libsndfile's names
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


@dataclass(frozen=True)
class _Encoding:
    """How a file of one format is encoded (checked once, shared by the in-memory and clip writers)."""

    format: str
    rate: int
    subtype: str
    options: dict[str, object]
    quality: float | None
    tags: dict[str, str]
    clip: bool  # samples are clipped to [-1, 1] first


def _encoding(
    format: str,
    subtype: str,
    sample_rate: int,
    codec: str | None,
    quality: float | None,
    tags: Mapping[str, str] | None,
) -> _Encoding:
    q: float | None = None
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
    options: dict[str, object] = {}
    if q is not None:
        # libsndfile's compression level is the inverse of quality; 1.0 is refused by its MP3 encoder.
        options["compression_level"] = min(0.99, 1.0 - q)
        if format == "mp3":
            options["bitrate_mode"] = "VARIABLE"
    return _Encoding(
        format=format,
        rate=_encoder_rate(format, codec, int(sample_rate)),
        subtype=encoded_subtype(format, subtype, codec),
        options=options,
        quality=q,
        tags={k: v for k, v in (tags or {}).items() if v},
        clip=subtype != "FLOAT" or format in LOSSY,
    )


def _open(target: object, enc: _Encoding, channels: int) -> sf.SoundFile:
    snd = sf.SoundFile(
        target,
        mode="w",
        samplerate=enc.rate,
        channels=channels,
        format=FORMATS[enc.format],
        subtype=enc.subtype,
        **enc.options,
    )
    for key, value in enc.tags.items():
        setattr(snd, key, value)
    return snd


def write_audio(
    path: Path | str,
    audio: np.ndarray | Clip,
    sample_rate: int,
    format: AudioFormat = "wav",
    subtype: AudioSubtype = "PCM_16",
    *,
    create_new: bool = False,
    codec: OggCodec | None = None,
    quality: float | None = None,
    tags: Mapping[str, str] | None = None,
    music: MusicTags | None = None,
    song: SongText | None = None,
    block: int = 1 << 18,
) -> AudioFileInfo:
    """Write [channels, samples] float32 audio to `path` atomically and describe the file.

    PCM subtypes are clipped to [-1, 1] first (soundfile would wrap or clip per sample
    otherwise); lossy formats are clipped too (their encoders would). create_new=True refuses
    to replace an existing file (FileExistsError). `codec` (ogg: vorbis|opus) and `quality`
    (0..1, 1 best) apply to mp3/ogg only. `tags`: keys from TAG_KEYS. `music` (tempo and key) and
    `song` (lyrics) are written where the container has fields for them (daemon.audio.musictags).

    An array is encoded in memory and the file decoded back into `decoded`. A `Clip` (audio on
    disk) is read `block` samples at a time and encoded straight into the file, so memory does not
    grow with it; `decoded` is then None (read the file with `FileClip`).
    """
    path = Path(path)
    if not isinstance(audio, np.ndarray):
        if audio.channels > 8:
            raise ValueError(f"audio has {audio.channels} channels: pass [channels, samples]")
        _check(format, subtype, np.zeros((audio.channels, 0), np.float32), sample_rate)
        enc = _encoding(format, subtype, sample_rate, codec, quality, tags)
        return _write_clip(path, audio, sample_rate, enc, create_new, block, music, song)
    x = _check(format, subtype, audio, sample_rate)
    enc = _encoding(format, subtype, sample_rate, codec, quality, tags)
    if enc.clip:
        x = np.clip(x, -1.0, 1.0)
    x = _resample(x, int(sample_rate), enc.rate)
    channels = x.shape[0]
    # Encode in memory, then write the bytes ourselves: libsndfile's virtual-I/O callbacks
    # swallow write errors, so ENOSPC would surface as a truncated file instead of an OSError.
    buf = io.BytesIO()
    with _open(buf, enc, channels) as snd:
        snd.write(np.ascontiguousarray(x.T))
    tag_file(buf, format, enc.subtype, music, song)
    data = buf.getvalue()
    decoded, back_rate = read_audio_bytes(data)
    if back_rate != enc.rate or decoded.shape[0] != channels:
        raise ValueError(
            f"{format} file reads back as {decoded.shape[0]} ch at {back_rate} Hz, "
            f"wrote {channels} at {enc.rate}"
        )
    with atomic_writer(path, create_new=create_new) as fh:
        fh.write(data)
    frames = decoded.shape[1] if format in LOSSY else x.shape[1]
    return AudioFileInfo(
        path=path,
        format=format,
        subtype=enc.subtype,
        sample_rate=enc.rate,
        channels=channels,
        frames=frames,
        duration_s=frames / float(enc.rate),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        tags=enc.tags,
        quality=enc.quality,
        decoded=decoded,
    )


class _Sink:
    """A file for libsndfile's virtual I/O that keeps the first error: an exception raised inside
    its callbacks would be printed and lost, leaving a short file (ENOSPC, EIO). After an error
    every call is a no-op; the writer raises the error once libsndfile lets go."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def _guard(self, call: Callable[[], int], failed: int) -> int:
        if self.error is None:
            try:
                return call()
            except OSError as exc:
                self.error = exc
        return failed

    def write(self, data: bytes) -> int:
        return self._guard(lambda: self._fh.write(data) or len(data), 0)

    def read(self, size: int = -1) -> bytes:
        out = b""

        def call() -> int:
            nonlocal out
            out = self._fh.read(size)
            return len(out)

        self._guard(call, 0)
        return out

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._guard(lambda: self._fh.seek(offset, whence), -1)

    def tell(self) -> int:
        return self._guard(self._fh.tell, -1)


def _resampled_blocks(clip: Clip, src: int, dst: int, block: int) -> Iterator[np.ndarray]:
    """`clip` at rate `dst`, block by block: each block resampled with the filter's context on either
    side and cut where the whole signal's output would be, so the joins are exact."""
    g = math.gcd(src, dst)
    up, down = dst // g, src // g
    step = max(down, block - block % down)
    pad = 64 * down  # past the resampling filter's reach (10 input samples), a multiple of `down`
    n = clip.samples
    for start in range(0, n, step):
        stop = min(n, start + step)
        lo, hi = max(0, start - pad), min(n, stop + pad)
        y = resample_poly(clip.read(lo, hi), up, down, axis=-1).astype(np.float32)
        first = (start - lo) * up // down
        yield y[:, first:] if stop == n else y[:, first : first + (stop - start) * up // down]


def _write_clip(
    path: Path,
    clip: Clip,
    sample_rate: int,
    enc: _Encoding,
    create_new: bool,
    block: int,
    music: MusicTags | None,
    song: SongText | None,
) -> AudioFileInfo:
    """A clip encoded block by block straight into the file (see `write_audio`)."""
    format = enc.format
    if clip.channels > 8:
        raise ValueError(f"audio has {clip.channels} channels: pass [channels, samples]")
    if enc.rate == sample_rate:
        blocks: Iterator[np.ndarray] = (clip.read(s, s + block) for s in range(0, clip.samples, block))
    else:
        blocks = _resampled_blocks(clip, int(sample_rate), enc.rate, block)
    digest = hashlib.sha256()
    with atomic_writer(path, create_new=create_new) as fh:
        sink = _Sink(fh)
        try:
            with _open(sink, enc, clip.channels) as snd:
                for x in blocks:
                    if not np.all(np.isfinite(x)):
                        raise ValueError("audio contains NaN or infinite samples")
                    snd.write(np.ascontiguousarray((np.clip(x, -1.0, 1.0) if enc.clip else x).T))
                    if sink.error is not None:
                        break
        except Exception:
            if sink.error is not None:  # soundfile's own complaint about the short write
                raise sink.error from None
            raise
        if sink.error is not None:
            raise sink.error
        tag_file(fh, format, enc.subtype, music, song)
        fh.seek(0)
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
        size = fh.tell()
    info = sf.info(str(path))
    if info.samplerate != enc.rate or info.channels != clip.channels:
        raise ValueError(
            f"{format} file reads back as {info.channels} ch at {info.samplerate} Hz, "
            f"wrote {clip.channels} at {enc.rate}"
        )
    return AudioFileInfo(
        path=path,
        format=format,
        subtype=enc.subtype,
        sample_rate=enc.rate,
        channels=clip.channels,
        frames=int(info.frames),
        duration_s=int(info.frames) / float(enc.rate),
        bytes=size,
        sha256=digest.hexdigest(),
        tags=enc.tags,
        quality=enc.quality,
    )


class FileClip:
    """An audio file as a `Clip` ([channels, samples] float32), best read in order: consecutive
    reads continue where the last stopped, without seeking (a lossy decoder's seek is approximate)."""

    def __init__(self, path: Path | str, block: int = 1 << 18) -> None:
        self.path = Path(path)
        self._snd = sf.SoundFile(str(self.path))
        self.channels, self.sample_rate = int(self._snd.channels), int(self._snd.samplerate)
        if self._snd.format in LOSSY_FORMATS:
            # a lossy file's frame count in its header is an estimate: count what the decoder gives
            self.samples = sum(b.shape[0] for b in self._snd.blocks(blocksize=block, dtype="float32"))
            self._snd.seek(0)
        else:
            self.samples = int(self._snd.frames)
        self._at = 0

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.samples if stop is None else min(stop, self.samples)
        if start != self._at:
            self._snd.seek(start)
        data = self._snd.read(max(0, stop - start), dtype="float32", always_2d=True)
        self._at = start + data.shape[0]
        return np.ascontiguousarray(data.T)

    def close(self) -> None:
        self._snd.close()

    def __enter__(self) -> FileClip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_audio_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a file's bytes ([channels, samples] float32, sample_rate)."""
    snd, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return np.ascontiguousarray(snd.T), int(sr)


def read_audio(path: Path | str) -> tuple[np.ndarray, int]:
    """Read a file back as ([channels, samples] float32, sample_rate): the inverse of write_audio."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(sr)
