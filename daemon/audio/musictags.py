"""What a file says of its music beyond libsndfile's tags, in the fields players and tools read:
tempo and key, and a song's lyrics.

libsndfile writes title, comment, software and date only. After it has written a file, mutagen adds
the rest where the container has a field for it: Vorbis comments BPM, INITIALKEY, LYRICS and
LANGUAGE in FLAC and Ogg (Vorbis and Opus); ID3 TBPM, TKEY and USLT in mp3. WAV gets an `acid`
chunk (tempo, beats, metre and root note: what DAWs read to loop a file); RIFF has no lyrics field.
mutagen moves the audio behind a grown header through the file, not through memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from mutagen.flac import FLAC
from mutagen.id3 import ID3, TBPM, TKEY, USLT, ID3NoHeaderError
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis

from jobspec.music import parse_key


@dataclass(frozen=True)
class MusicTags:
    bpm: float
    key: str | None = None  # a normalised key name, e.g. "A minor"
    beats: int = 0  # quarter-note beats in the file (loops), 0 when not a loop
    time_signature: str | None = None
    loop: bool = False


@dataclass(frozen=True)
class SongText:
    lyrics: str
    language: str | None = None  # an ISO 639 code as the job gave it: "en", "pt-br"


def _comments(music: MusicTags | None, song: SongText | None) -> dict[str, str]:
    fields = {}
    if music is not None:
        fields["BPM"] = f"{music.bpm:g}"
        if music.key:
            fields["INITIALKEY"] = music.key
    if song is not None:
        fields["LYRICS"] = song.lyrics
        if song.language:
            fields["LANGUAGE"] = song.language
    return fields


def _id3_key(name: str) -> str:
    """ID3's TKEY spelling: at most three characters, "m" for minor ("F# minor" -> "F#m")."""
    tonic, mode = name.split()
    return tonic + ("m" if mode == "minor" else "")


# ISO 639-1 -> ISO 639-2/T (the ISO 639-3 code too) for the languages ACE-Step sings and their
# neighbours; USLT takes three letters, and a code outside this table gets ID3's "XXX", unknown.
_ISO639_2 = dict(
    pair.split(":")
    for pair in (
        "af:afr am:amh ar:ara az:aze be:bel bg:bul bn:ben bs:bos ca:cat cs:ces cy:cym da:dan de:deu "
        "el:ell en:eng es:spa et:est eu:eus fa:fas fi:fin fr:fra ga:gle gl:glg gu:guj ha:hau he:heb "
        "hi:hin hr:hrv ht:hat hu:hun hy:hye id:ind ig:ibo is:isl it:ita ja:jpn ka:kat kk:kaz km:khm "
        "kn:kan ko:kor la:lat lo:lao lt:lit lv:lav mk:mkd ml:mal mn:mon mr:mar ms:msa my:mya ne:nep "
        "nl:nld no:nor pa:pan pl:pol pt:por ro:ron ru:rus sa:san si:sin sk:slk sl:slv so:som sq:sqi "
        "sr:srp sv:swe sw:swa ta:tam te:tel th:tha tl:tgl tr:tur uk:ukr ur:urd uz:uzb vi:vie yo:yor "
        "zh:zho zu:zul"
    ).split()
)


def _id3_language(language: str | None) -> str:
    """USLT's three-letter language for a job's ISO 639 code: "de" -> "deu", "pt-br" -> "por";
    a three-letter code ("yue") as it is."""
    base = (language or "").split("-")[0]
    if len(base) == 3 and base.isalpha():
        return base
    return _ISO639_2.get(base, "XXX")


def _mp3(fh: BinaryIO, music: MusicTags | None, song: SongText | None) -> None:
    try:
        tags = ID3(fh)
    except ID3NoHeaderError:
        tags = ID3()
    if music is not None:
        tags.add(TBPM(encoding=3, text=[f"{round(music.bpm)}"]))
        if music.key:
            tags.add(TKEY(encoding=3, text=[_id3_key(music.key)]))
    if song is not None:
        tags.add(USLT(encoding=3, lang=_id3_language(song.language), desc="", text=song.lyrics))
    fh.seek(0)
    tags.save(fh, v2_version=3)  # 2.3: what most players and file managers read


def _wav(fh: BinaryIO, tags: MusicTags) -> None:
    fh.seek(0)
    head = fh.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    top, bottom = (int(x) for x in (tags.time_signature or "4/4").split("/"))
    flags = 0x04 if tags.loop else 0x01  # stretchable loop, or a one-shot
    root = 0
    if tags.key:
        flags |= 0x02
        root = 48 + parse_key(tags.key)[0]  # the tonic as a MIDI note in the octave from C3
    body = struct.pack("<IHHfIHHf", flags, root, 0x8000, 0.0, tags.beats, bottom, top, float(tags.bpm))
    fh.seek(0, 2)
    fh.write(b"acid" + struct.pack("<I", len(body)) + body)
    size = fh.tell()
    fh.seek(4)
    fh.write(struct.pack("<I", size - 8))


def tag_file(fh: BinaryIO, format: str, subtype: str, music: MusicTags | None, song: SongText | None) -> None:
    """Add tempo, key and lyrics to the encoded file open read-write in `fh` (`subtype`: libsndfile's,
    which tells Vorbis from Opus in Ogg), where its container has fields for them."""
    if music is None and song is None:
        return
    if format == "wav":
        if music is not None:
            _wav(fh, music)
        return
    if format == "mp3":
        _mp3(fh, music, song)
        return
    kind = {"flac": FLAC, "ogg": OggOpus if subtype == "OPUS" else OggVorbis}[format]
    fh.seek(0)
    audio = kind(fh)
    if audio.tags is None:
        audio.add_tags()
    for name, value in _comments(music, song).items():
        audio[name] = value
    fh.seek(0)
    audio.save(fh)
