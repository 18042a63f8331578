"""The `output:` block of a job: which file each variation becomes (container, codec, quality,
loudness). Its field descriptions are user documentation, like those of `jobspec.models`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = ["DEFAULT_QUALITY", "LOSSY_FORMATS", "Output"]

LOSSY_FORMATS = ("mp3", "ogg")
DEFAULT_QUALITY = 0.6


class Output(BaseModel):
    """The audio file written for each variation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["wav", "flac", "mp3", "ogg"] = Field(
        default="wav", description="Audio container: wav, flac (lossless), mp3 or ogg (small previews)."
    )
    subtype: Literal["PCM_16", "PCM_24", "FLOAT"] = Field(
        default="PCM_16",
        description="Sample format of wav/flac: PCM_16, PCM_24, or FLOAT (32-bit float, wav only).",
    )
    codec: Literal["vorbis", "opus"] | None = Field(
        default=None,
        description="ogg only: vorbis or opus (opus is written at 48 kHz); null means vorbis for ogg.",
    )
    quality: Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)] | None = Field(
        default=None,
        description="mp3/ogg only: encoder quality 0..1 (1 is best, variable bitrate); "
        f"null means {DEFAULT_QUALITY}.",
    )
    loudness_lufs: Annotated[float, Field(strict=True, ge=-70.0, le=-5.0, allow_inf_nan=False)] | None = (
        Field(
            default=-16.0,
            description="Integrated loudness target (EBU R128), -70..-5 LUFS; "
            "null leaves the level untouched.",
        )
    )
    true_peak_dbtp: Annotated[float, Field(strict=True, ge=-9.0, le=0.0, allow_inf_nan=False)] | None = Field(
        default=-1.0,
        description="True-peak ceiling, -9..0 dBTP; null applies no limiter.",
    )

    @field_validator("subtype")
    @classmethod
    def _subtype_fits_format(cls, value: str, info: ValidationInfo) -> str:
        fmt = info.data.get("format")
        if value == "FLOAT" and fmt == "flac":
            raise PydanticCustomError(
                "subtype_not_allowed", "subtype FLOAT is not available for flac (FLAC stores integers only)"
            )
        if value != "PCM_16" and fmt in LOSSY_FORMATS:
            raise PydanticCustomError(
                "subtype_not_allowed",
                "subtype {subtype} applies to wav and flac, not {format}",
                {"subtype": value, "format": fmt},
            )
        return value

    @field_validator("codec")
    @classmethod
    def _codec_needs_ogg(cls, value: str | None, info: ValidationInfo) -> str | None:
        fmt = info.data.get("format")
        if value is not None and fmt is not None and fmt != "ogg":
            raise PydanticCustomError(
                "codec_not_allowed", "codec applies to ogg only, not {format}", {"format": fmt}
            )
        return value

    @field_validator("quality")
    @classmethod
    def _quality_needs_lossy(cls, value: float | None, info: ValidationInfo) -> float | None:
        fmt = info.data.get("format")
        if value is not None and fmt is not None and fmt not in LOSSY_FORMATS:
            raise PydanticCustomError(
                "quality_not_allowed",
                "quality applies to mp3 and ogg, not {format} (a lossless format)",
                {"format": fmt},
            )
        return value

    @model_validator(mode="after")
    def _effective_codec_and_quality(self) -> "Output":
        # The request records effective values: an ogg file is vorbis unless asked otherwise.
        # (The fields are None for wav/flac, so validating a dump again gives the same model.)
        if self.format == "ogg" and self.codec is None:
            object.__setattr__(self, "codec", "vorbis")
        if self.format in LOSSY_FORMATS and self.quality is None:
            object.__setattr__(self, "quality", DEFAULT_QUALITY)
        return self
