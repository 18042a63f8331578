"""What a job asks of the music itself: tempo, key and metre. Family-neutral: every model family
accepts them; each decides how to honour them (MusicGen reads them as text, see `text_hint`),
and the analysis of the written audio says how far the result is from them.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

__all__ = [
    "MAX_CANDIDATES",
    "MAX_LOOP_BARS",
    "Loop",
    "check_asked",
    "loop_default_duration",
    "loop_seconds",
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


MAX_LOOP_BARS = 64
MAX_CANDIDATES = 8


class Loop(BaseModel):
    """A loop of whole bars at the asked tempo."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bars: Annotated[int, Field(strict=True, ge=1, le=MAX_LOOP_BARS)] = Field(
        description=f"Bars in the loop, 1..{MAX_LOOP_BARS}: the output is exactly this many bars of the "
        "job's `bpm` and `time_signature` (4/4 when unset), cut at detected downbeats, time-stretched to "
        "the exact tempo and joined without a click at the wrap."
    )


def loop_seconds(bars: int, bpm: float, time_signature: str | None) -> float:
    """Length of `bars` bars at `bpm` (quarter notes a minute) in `time_signature`."""
    return bars * bar_beats(time_signature) * 60.0 / bpm


def loop_default_duration(data: dict[str, Any]) -> dict[str, Any]:
    """A raw job with a loop and no duration gets 1.5 loop lengths (room to choose the cut)."""
    loop, bpm = data.get("loop"), data.get("bpm")
    if "duration" in data or "sections" in data or not isinstance(loop, dict):
        return data
    bars, ts = loop.get("bars"), data.get("time_signature")
    if not (isinstance(bars, int) and isinstance(bpm, int) and bpm > 0 and bars > 0):
        return data
    ts = ts if isinstance(ts, str) and _TS_RE.fullmatch(ts) else None
    return {**data, "duration": math.ceil(15.0 * loop_seconds(bars, bpm, ts)) / 10.0}


def music_rule(key: str, message: str, hint: str) -> PydanticCustomError:
    """A rule between job keys, reported at `key` with `hint` (jobspec.loader reads both)."""
    return PydanticCustomError("music_rule", message, {"key": key, "hint": hint})


def check_asked(
    *,
    loop: Loop | None,
    bpm: int | None,
    time_signature: str | None,
    duration: float,
    count: int,
    candidates: int,
    keep_candidates: bool,
) -> None:
    """The rules between loop, bpm, duration, count and candidates; PydanticCustomError when broken."""
    if loop is not None and bpm is None:
        raise music_rule("loop", "a loop needs the tempo its bars are counted in", "add `bpm:` to the job")
    if loop is not None and bpm is not None:
        need = loop_seconds(loop.bars, bpm, time_signature)
        if duration + 1e-9 < need:
            raise music_rule(
                "duration",
                f"duration {duration:g} s is shorter than the loop ({loop.bars} bars at {bpm} BPM: "
                f"{need:.2f} s)",
                f"set duration to at least {math.ceil(need * 10) / 10:g} s (1.5 times that leaves room "
                "to choose the cut), or leave it out",
            )
    if candidates > 1 and count > 1:
        raise music_rule(
            "candidates",
            "candidates and count cannot both be above 1",
            "candidates keeps the best of several takes; count keeps several variations",
        )
    if keep_candidates and candidates == 1:
        raise music_rule(
            "keep_candidates", "keep_candidates needs candidates above 1", "set candidates: 2..8"
        )


# The job fields, described here beside their rules (jobspec.models lists them on JobSpec).
BPM_FIELD = Field(
    default=None,
    description=f"Tempo to ask for, {BPM_MIN}..{BPM_MAX} beats (quarter notes) a minute, "
    "every model family; MusicGen reads it as a hint in its text. The sidecar's `analysis.asked` says "
    "how far the result's measured tempo is from it.",
)
KEY_FIELD = Field(
    default=None,
    description='Key to ask for, e.g. "A minor", "F# major" (# or b, major/minor or maj/min; '
    'enharmonics accepted and recorded one way, "A# minor" as "Bb minor"). MusicGen reads it as a '
    "hint in its text; `analysis.asked.key_relation` in the sidecar compares the measured key.",
)
TIME_SIGNATURE_FIELD = Field(
    default=None,
    description='Metre to ask for, beats/note value: "4/4", "3/4", "6/8", ... '
    "(1..16 over 2, 4, 8 or 16). MusicGen reads it as a hint in its text; the analysis counts "
    "downbeats by it (4/4 when unset).",
)
Candidates = Annotated[int, Field(strict=True, ge=1, le=MAX_CANDIDATES)]
CANDIDATES_FIELD = Field(
    default=1,
    description=f"Best of N, 1..{MAX_CANDIDATES}: N takes (seed, seed+1, ...) in one batch, each scored "
    "against bpm, key and loop; the best is the job's output, every take's seed and scores are in the "
    "sidecar's `candidates`. Not with count above 1.",
)
KEEP_CANDIDATES_FIELD = Field(
    default=False, strict=True, description="true: write the other takes too, as `<id>-c<n>.<ext>`."
)
