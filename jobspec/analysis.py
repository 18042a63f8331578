"""The sidecar's `analysis` of each output: what the written audio measures, and how far that is
from what the job asked (`bpm`, `key`, `time_signature`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobspec.music import parse_key

Unit = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Time = Annotated[float, Field(ge=0, allow_inf_nan=False)]
KeyRelation = Literal["same", "relative", "parallel", "fifth", "other"]
# How far a measured key is from an asked one, for scoring: the same key, one that shares its
# notes or its tonic, a neighbour on the circle of fifths, anything else.
KEY_STEPS: dict[str, int] = {"same": 0, "relative": 1, "parallel": 1, "fifth": 2, "other": 3}


class Asked(BaseModel):
    """The measured result against what the job asked; a field is null where nothing was asked."""

    model_config = ConfigDict(extra="forbid")

    bpm: int | None = Field(default=None, description="The tempo the job asked for.")
    tempo_error_bpm: float | None = Field(
        default=None,
        description="Measured minus asked tempo in BPM (an octave off, e.g. 60 for 120, counts in full).",
    )
    key: str | None = Field(default=None, description="The key the job asked for, normalised.")
    key_relation: KeyRelation | None = Field(
        default=None,
        description="The measured key against the asked one: same, relative (same notes, other mode), "
        "parallel (same tonic, other mode), fifth (a neighbour on the circle of fifths, same mode), other.",
    )
    time_signature: str | None = Field(
        default=None, description="The metre the job asked for (downbeats are counted by it)."
    )


class Analysis(BaseModel):
    """Tempo, beats, key and loudness range measured on the file as written (decoded again)."""

    model_config = ConfigDict(extra="forbid")

    tempo_bpm: float | None = Field(
        description="Measured tempo in beats a minute; null when nothing repeats."
    )
    tempo_confidence: Unit = Field(
        description="0..1: the onset envelope's autocorrelation at the beat period (1: perfectly periodic)."
    )
    key: str | None = Field(description='Measured key, e.g. "A minor"; null for silence.')
    key_confidence: Unit = Field(
        description="0..1: correlation of the piece's chroma with the key's profile (clipped at 0)."
    )
    beats_s: list[Time] = Field(description="Beat times in seconds from the start, 3 decimals.")
    downbeats_s: list[Time] = Field(
        description="The beats that start a bar (by the asked time signature, 4/4 when none)."
    )
    loudness_range_lu: float | None = Field(
        description="Loudness range (EBU Tech 3342 LRA) in LU; null under 3 s or for silence."
    )
    asked: Asked | None = Field(
        default=None, description="How far the result is from what the job asked (null: nothing asked)."
    )


def key_relation(measured: str, asked: str) -> KeyRelation:
    """How the measured key stands to the asked one (see Asked.key_relation)."""
    (mt, mm), (at, am) = parse_key(measured), parse_key(asked)
    if (mt, mm) == (at, am):
        return "same"
    if mm != am:
        major_tonic = lambda t, m: t if m == "major" else (t + 3) % 12  # noqa: E731 - the relative major
        if major_tonic(mt, mm) == major_tonic(at, am):
            return "relative"
        if mt == at:
            return "parallel"
        return "other"
    return "fifth" if (mt - at) % 12 in (5, 7) else "other"


class LoopInfo(BaseModel):
    """How a loop output was made and how its seam measures."""

    model_config = ConfigDict(extra="forbid")

    bars: int = Field(ge=1, description="Bars in the loop.")
    bpm: int = Field(description="Its tempo: the job's bpm, exactly.")
    samples: int = Field(ge=1, description="Its length in samples: bars x beats a bar x 60 / bpm x rate.")
    start_s: Time = Field(description="Where in the generated audio it was cut (a downbeat).")
    source_s: Time = Field(description="How long a span of the generated audio it is.")
    stretch: float = Field(gt=0, description="Source seconds per loop second (> 1: sped up to the tempo).")
    stretcher: Literal["rubberband", "librosa"] = Field(
        description="What stretched it: Rubber Band's CLI where installed, else librosa's phase vocoder."
    )
    source_bpm: float | None = Field(description="The generated audio's measured tempo (octave-folded).")
    seam_jump: float = Field(ge=0, description="Largest jump between the last and first sample.")
    seam_jump_limit: float = Field(ge=0, description="99th percentile of the loop's sample-to-sample steps.")
    seam_change: float = Field(
        ge=0, description="Spectral change across the wrap (mean |log spectrum| diff)."
    )
    seam_change_limit: float = Field(
        ge=0,
        description="The larger of the 99th percentile inside and 1.25 x the music's own change at the cut.",
    )
    seamless: bool = Field(description="Both within their limits.")


class CandidateInfo(BaseModel):
    """One take of a best-of-N job: its seed (a job with this seed and candidates: 1 makes it again)
    and its scores; lower `score` is better."""

    model_config = ConfigDict(extra="forbid")

    candidate: int = Field(ge=1, description="Which take, 1..N (seed + candidate - 1).")
    seed: int = Field(ge=0, description="Its seed.")
    chosen: bool = Field(description="True for the take written as the job's output.")
    path: str | None = Field(default=None, description="Its file when written (chosen or kept).")
    tempo_bpm: float | None = Field(default=None, description="Its measured tempo (before any loop stretch).")
    tempo_error_bpm: float | None = Field(default=None, description="Measured minus asked tempo.")
    key: str | None = Field(default=None, description="Its measured key.")
    key_relation: KeyRelation | None = Field(default=None, description="Its key against the asked one.")
    seam_score: float | None = Field(
        default=None, description="Loop jobs: the worse seam ratio to its limit (<= 1 is seamless)."
    )
    score: float = Field(
        description="|tempo error| in BPM + 4 x key steps (same 0, relative/parallel 1, fifth 2, other 3) "
        "+ 5 x seam score, each where asked (no tempo found counts 30, no key 12); with nothing asked, "
        "minus the tempo and key confidences."
    )
