"""What a job asks of the music itself: tempo, key and metre. Family-neutral: every model family
accepts them; each decides how to honour them (MusicGen reads them as text, see `text_hint`),
and the analysis of the written audio says how far the result is from them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

__all__ = [
    "BPM_MAX",
    "BPM_MIN",
    "KEY_PATTERN",
    "TIME_SIGNATURE_PATTERN",
    "Bpm",
    "MusicalKey",
    "TimeSignature",
    "bar_beats",
    "key_name",
    "normalize_key",
    "parse_key",
    "text_hint",
]

BPM_MIN, BPM_MAX = 30, 300

# The pitch classes of the tonic names, C = 0.
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_ACCIDENTALS = {"": 0, "#": 1, "♯": 1, "b": -1, "♭": -1}
_MODES = {"major": "major", "maj": "major", "minor": "minor", "min": "minor"}
# The spelling with the fewest accidentals in its key signature (ties: the more common name),
# so "A# minor" and "Bb minor" both read "Bb minor" in the sidecar.
_SPELLING = {
    "major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
    "minor": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"),
}
KEY_PATTERN = r"^\s*[A-Ga-g][#b♯♭]?\s*([Mm][Aa][Jj]([Oo][Rr])?|[Mm][Ii][Nn]([Oo][Rr])?)\s*$"
_KEY_RE = re.compile(r"\s*([A-Ga-g])([#b♯♭]?)\s*([A-Za-z]+)\s*")

TIME_SIGNATURE_PATTERN = r"^([1-9]|1[0-6])/(2|4|8|16)$"
_TS_RE = re.compile(TIME_SIGNATURE_PATTERN[1:-1])

Mode = Literal["major", "minor"]


def parse_key(value: str) -> tuple[int, Mode]:
    """`(tonic pitch class 0..11, mode)` of a key name such as "F# minor", "Gb maj", "a min"."""
    m = _KEY_RE.fullmatch(value)
    mode = _MODES.get(m.group(3).lower()) if m else None
    if m is None or mode is None:
        raise PydanticCustomError(
            "musical_key",
            "'{value}' is not a key: write a tonic A..G, optionally # or b, then major or minor",
            {"value": value},
        )
    tonic = (_LETTERS[m.group(1).upper()] + _ACCIDENTALS[m.group(2)]) % 12
    return tonic, mode  # type: ignore[return-value]


def key_name(tonic: int, mode: Mode) -> str:
    """The normalised name of a key: "F# minor", "Eb major"."""
    return f"{_SPELLING[mode][tonic % 12]} {mode}"


def normalize_key(value: str) -> str:
    """A key as the sidecar records it: enharmonics spelled one way ("A# minor" -> "Bb minor")."""
    return key_name(*parse_key(value))


def _check_time_signature(value: str) -> str:
    if not _TS_RE.fullmatch(value):
        raise PydanticCustomError(
            "time_signature",
            "'{value}' is not a time signature: write beats/note value, e.g. 4/4, 3/4, 6/8",
            {"value": value},
        )
    return value


def bar_beats(time_signature: str | None) -> float:
    """Quarter-note beats in one bar: 4/4 -> 4, 3/4 -> 3, 6/8 -> 3, 7/8 -> 3.5 (BPM counts quarters)."""
    if time_signature is None:
        return 4.0
    top, bottom = (int(x) for x in time_signature.split("/"))
    return top * 4.0 / bottom


def text_hint(bpm: int | None, key: str | None, time_signature: str | None) -> str:
    """The asked tempo, key and metre as text, in the `name: value` form audiocraft merges into
    MusicGen's training descriptions; "" when nothing is asked."""
    parts = []
    if bpm is not None:
        parts.append(f"bpm: {bpm}")
    if key is not None:
        parts.append(f"key: {normalize_key(key)}")
    if time_signature is not None:
        parts.append(f"time signature: {time_signature}")
    return ". ".join(parts)


Bpm = Annotated[int, Field(strict=True, ge=BPM_MIN, le=BPM_MAX)]
MusicalKey = Annotated[
    str,
    Field(strict=True, json_schema_extra={"pattern": KEY_PATTERN}),
    AfterValidator(normalize_key),
]
TimeSignature = Annotated[
    str,
    Field(strict=True, json_schema_extra={"pattern": TIME_SIGNATURE_PATTERN}),
    AfterValidator(_check_time_signature),
]
