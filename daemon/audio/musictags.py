"""Tempo and key in the file itself, where the container has fields for them (libsndfile writes
none): FLAC gets Vorbis comments BPM and INITIALKEY (the names DJ and tagging tools read); WAV
gets an `acid` chunk (tempo, beats, metre and root note: what DAWs read to loop a file). mp3 and
ogg are left as they are (their comment tag carries the asked values)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from jobspec.music import parse_key


@dataclass(frozen=True)
class MusicTags:
    bpm: float
    key: str | None = None  # a normalised key name, e.g. "A minor"
    beats: int = 0  # quarter-note beats in the file (loops), 0 when not a loop
    time_signature: str | None = None
    loop: bool = False


def _flac(data: bytes, tags: MusicTags) -> bytes:
    if data[:4] != b"fLaC":
        return data
    extra = [f"BPM={tags.bpm:g}"] + ([f"INITIALKEY={tags.key}"] if tags.key else [])
    pos, out = 4, [b"fLaC"]
    while pos + 4 <= len(data):
        head, size = data[pos], int.from_bytes(data[pos + 1 : pos + 4], "big")
        body = data[pos + 4 : pos + 4 + size]
        pos += 4 + size
        if head & 0x7F == 4:  # VORBIS_COMMENT: vendor, then a count of length-prefixed "NAME=value"
            count_at = 4 + struct.unpack_from("<I", body, 0)[0]
            count = struct.unpack_from("<I", body, count_at)[0]
            added = b"".join(struct.pack("<I", len(e.encode())) + e.encode() for e in extra)
            body = body[:count_at] + struct.pack("<I", count + len(extra)) + body[count_at + 4 :] + added
        out.append(bytes([head]) + len(body).to_bytes(3, "big") + body)
        if head & 0x80:  # the last metadata block: audio frames follow
            break
    return b"".join(out) + data[pos:]


def _wav(data: bytes, tags: MusicTags) -> bytes:
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    top, bottom = (int(x) for x in (tags.time_signature or "4/4").split("/"))
    flags = 0x04 if tags.loop else 0x01  # stretchable loop, or a one-shot
    root = 0
    if tags.key:
        flags |= 0x02
        root = 48 + parse_key(tags.key)[0]  # the tonic as a MIDI note in the octave from C3
    body = struct.pack("<IHHfIHHf", flags, root, 0x8000, 0.0, tags.beats, bottom, top, float(tags.bpm))
    chunk = b"acid" + struct.pack("<I", len(body)) + body
    riff = data + chunk
    return riff[:4] + struct.pack("<I", len(riff) - 8) + riff[8:]


def add_music_tags(data: bytes, format: str, tags: MusicTags | None) -> bytes:
    """`data` (a whole encoded file) with tempo and key added where `format` has fields for them."""
    if tags is None:
        return data
    if format == "flac":
        return _flac(data, tags)
    if format == "wav":
        return _wav(data, tags)
    return data
