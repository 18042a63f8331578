"""Editing a song (ACE-Step models): repaint a range of it, restyle it (cover), or split it into
stems (extract). Each names its source, a `library/` or `outbox/` reference read under the same
rules as `continue_from`; the result is as long as the source.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from jobspec.names import REFERENCE_PATTERN, STEM_TRACKS, check_reference

__all__ = ["EDIT_KEYS", "TRACKS", "Complete", "Cover", "Extract", "Lego", "Repaint", "Track"]

# The stems ACE-Step 1.5 checkpoints are trained to extract (its instruction names the track).
TRACKS = STEM_TRACKS
# Job keys that edit a source (one of them a job).
EDIT_KEYS = ("repaint", "cover", "extract", "lego", "complete")

Track = Literal[STEM_TRACKS]  # type: ignore[valid-type]
Source = Annotated[
    str, Field(strict=True, json_schema_extra={"pattern": REFERENCE_PATTERN}), AfterValidator(check_reference)
]
Seconds = Annotated[float, Field(strict=True, ge=0.0, allow_inf_nan=False)]


class _Edit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Source = Field(
        description="The song to edit: `library/<file>` or `outbox/<file>` (wav, flac, ogg, mp3), "
        "read as 48 kHz stereo; the result is as long as it."
    )


class Repaint(_Edit):
    """Regenerate [start, end) of the source; the rest is kept."""

    start: Seconds = Field(description="Where the repainted range starts, seconds into the source.")
    end: Seconds | None = Field(
        default=None, description="Where it ends, seconds; left out or null: the source's end."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Repaint:
        if self.end is not None and self.end <= self.start:
            raise PydanticCustomError(
                "music_rule",
                f"repaint.end ({self.end:g} s) must come after repaint.start ({self.start:g} s)",
                {"key": "end", "hint": "set end after start, or leave it out for the source's end"},
            )
        return self


class Cover(_Edit):
    """The source restyled by the prompt (and lyrics), its structure kept."""

    strength: float = Field(
        default=1.0,
        strict=True,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="How closely the result follows the source, 0..1 (1: as close as the model can; "
        "lower mixes in a song made from the text alone).",
    )


class Extract(_Edit):
    """Stems of the source, one file per track."""

    tracks: Annotated[list[Track], Field(min_length=1, max_length=len(TRACKS))] = Field(
        description=f"Tracks to extract, each once: {', '.join(TRACKS)}. One output file per track, "
        "`<id>-<track>.<ext>`."
    )

    @model_validator(mode="after")
    def _once(self) -> Extract:
        if len(set(self.tracks)) != len(self.tracks):
            raise PydanticCustomError(
                "music_rule",
                "extract.tracks names a track twice",
                {"key": "tracks", "hint": "name each track once"},
            )
        return self


class Lego(_Edit):
    """A new track (`track`) generated over the source's start..end, the source as its context."""

    track: Track = Field(description=f"The track to add: {', '.join(TRACKS)}.")
    start: Seconds = Field(default=0.0, description="Where the new track starts, seconds into the source.")
    end: Seconds | None = Field(
        default=None, description="Where it ends; left out or null: the source's end."
    )


class Complete(_Edit):
    """The source completed with the tracks it lacks (`tracks`: which; left out: as the model hears fit)."""

    tracks: Annotated[list[Track], Field(max_length=len(TRACKS))] = Field(
        default_factory=list, description="Tracks to complete it with; empty: the model chooses."
    )


# The job's edit keys, described beside their rules (the README's job table and the JSON Schema
# read these descriptions).
REPAINT_FIELD = Field(
    default=None,
    description="ACE-Step models: regenerate `start`..`end` seconds of `source` (a library/ or outbox/ "
    "file) from the prompt and lyrics, the rest of it kept; the result is as long as the source.",
)
COVER_FIELD = Field(
    default=None,
    description="ACE-Step models: `source` restyled by the prompt and lyrics, its structure kept "
    "(`strength` 0..1); the result is as long as the source.",
)
EXTRACT_FIELD = Field(
    default=None,
    description="ACE-Step models: stems of `source`, one file per track in `tracks` "
    "(`<id>-<track>.<ext>`), all in one sidecar.",
)
LEGO_FIELD = Field(
    default=None,
    description="ACE-Step models: a new `track` generated over `start`..`end` of `source`, the "
    "source as its context (the pipeline's lego task); the result is as long as the source.",
)
COMPLETE_FIELD = Field(
    default=None,
    description="ACE-Step models: `source` completed with `tracks` (the pipeline's complete task).",
)
