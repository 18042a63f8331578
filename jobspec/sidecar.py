"""The JSON sidecars the daemon writes: `<id>.json` in outbox/, `<id>.error.json` in failed/."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from jobspec.analysis import Analysis, CandidateInfo, LoopInfo
from jobspec.errors import ErrorDetail
from jobspec.models import Job

SCHEMA_VERSION = 1

ErrorType = Literal[
    "invalid_job",
    "unknown_model",
    "out_of_memory",
    "timeout",
    "cancelled",
    "crashed",
    "generation_error",
    "internal",
]

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timings(_Strict):
    """Where the time went, in seconds."""

    queue_s: Seconds = Field(default=0.0, description="From pickup to the start of work.")
    model_load_s: Seconds = Field(
        default=0.0, description="Loading the model for this job (0 when resident)."
    )
    generate_s: Seconds = Field(default=0.0, description="Token generation and decoding.")
    postprocess_s: Seconds = Field(
        default=0.0, description="Loudness, limiting, encoding and writing the files."
    )
    analysis_s: Seconds = Field(
        default=0.0, description="Measuring tempo, beats, key and loudness range (part of postprocess_s)."
    )
    total_s: Seconds = Field(default=0.0, description="From pickup to the result being written.")


class DecodeSetupInfo(_Strict):
    """How the model decoded, decided once when it was loaded (or the configuration reloaded)."""

    family: str = Field(description="The model family, e.g. musicgen.")
    decoder: str = Field(description="The decode loop that ran: dgx or transformers.")
    capture: Literal["on", "off", "failed"] | None = Field(
        default=None, description="CUDA graphs: on, off, or failed (then the step ran uncaptured)."
    )
    capture_error: str | None = Field(default=None, description="Why the capture failed.")
    compile: Literal["on", "off", "failed"] | None = Field(
        default=None,
        description="torch.compile of the step (ACE-Step's DiT): on, off, or failed (then it ran eager).",
    )
    compile_error: str | None = Field(default=None, description="Why the compile failed.")
    rows: int | None = Field(
        default=None, ge=1, description="The fixed row count of every decode call (batch invariance)."
    )
    kernels: str | None = Field(
        default=None, description="The kernels the decode step ran on: triton or aten."
    )
    batch_invariant: bool = Field(default=False, description="Whether decodes ran at fixed shapes.")
    fallback: str | None = Field(
        default=None, description="Why the configured decoder is not the one that ran (None: it is)."
    )
    load_check: str | None = Field(default=None, description="What the decode loop's check at load found.")


class ModelInfo(_Strict):
    """The model that made the audio."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(description="The model's name in the daemon's config.")
    family: str | None = Field(default=None, description="The model family: musicgen or ace-step.")
    license: str | None = Field(
        default=None,
        description="The weights' licence as the model card's metadata (or the config) gives it, e.g. "
        "mit, cc-by-nc-4.0 (no commercial use); null when unknown.",
    )
    source: str = Field(description="Hugging Face repo id or local directory.")
    revision: str | None = Field(default=None, description="Resolved revision (commit hash) when known.")
    dtype: str = Field(description="Weights dtype, e.g. float32, bfloat16.")
    device: str = Field(description="Device it ran on, e.g. cpu, cuda:0.")
    parameters: int = Field(ge=0, description="Parameter count.")
    decoder: str | None = Field(
        default=None,
        description="The token decode loop that ran: dgx (dgx-music's own) or transformers (generate).",
    )
    setup: DecodeSetupInfo | None = Field(
        default=None, description="How the model decoded (its decode setup)."
    )


REPRODUCED_BY = [
    "request",
    "seed",
    "model.source",
    "model.revision",
    "model.dtype",
    "decoder",
    "kernels (the dgx decoder's step: triton or aten)",
    "device model (the same GPU or CPU model)",
    "max_batch (where batch_invariant is on)",
    "dgx-music version",
    "torch and transformers versions",
]


class Reproducibility(_Strict):
    """What reproduces the result's tokens, and whether other jobs decoded with it could change them."""

    requires: list[str] = Field(
        default_factory=lambda: list(REPRODUCED_BY),
        description="What must be the same to get the same tokens again: the normalized request "
        "(its seed included), the model's source, revision and dtype, the decoder and its kernels, the "
        "device model (the same GPU or CPU model: kernels differ between them), max_batch where "
        "batch_invariant is on (it sets the fixed row count), and the dgx-music, torch and transformers "
        "versions.",
    )
    batch_mates: Literal["independent", "same_job_only", "may_differ"] = Field(
        description="independent: the tokens do not depend on the other rows (other jobs) decoded "
        "with them; same_job_only: only rows of this job shared its decode calls, and the tokens "
        "depend on how they were split; may_differ: other rows of the call may change them.",
    )
    by_construction: bool = Field(
        description="True when independence is built in (fixed decode shapes: `batch_invariant`); "
        "False when it rests on the device's kernels (tested on the CPU) or is not promised.",
    )
    basis: str = Field(description="One sentence on why, for a person.")


class Waveform(_Strict):
    """A min/max peak envelope of the channel-mixed signal, for drawing the waveform."""

    bins: int = Field(ge=0, description="Number of (min, max) pairs; each covers frames / bins samples.")
    min: list[Finite] = Field(description="Lowest sample per span, -1..1 for PCM.")
    max: list[Finite] = Field(description="Highest sample per span.")

    @model_validator(mode="after")
    def _same_length(self) -> "Waveform":
        if not (len(self.min) == len(self.max) == self.bins):
            raise ValueError("min and max must both hold `bins` values")
        return self


class OutputInfo(_Strict):
    """One audio file written for the job."""

    path: str = Field(description="File path relative to outbox/, e.g. 'loop-v2.wav'.")
    format: Literal["wav", "flac", "mp3", "ogg"] = Field(description="Audio container.")
    subtype: Literal["PCM_16", "PCM_24", "FLOAT", "MPEG_LAYER_III", "VORBIS", "OPUS"] = Field(
        description="Sample format (wav/flac) or codec (MPEG_LAYER_III for mp3, VORBIS or OPUS for ogg)."
    )
    quality: float | None = Field(
        default=None, ge=0, le=1, description="Encoder quality 0..1 (mp3/ogg), null for lossless."
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="Metadata written into the file (title, comment, software, date) "
        "as far as the container keeps them.",
    )
    sample_rate: int = Field(gt=0, description="Samples per second.")
    channels: int = Field(gt=0, description="1 mono, 2 stereo.")
    frames: int = Field(ge=0, description="Samples per channel.")
    duration_s: Seconds = Field(description="frames / sample_rate.")
    bytes: int = Field(ge=0, description="File size.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the file, hex.")
    integrated_lufs: float | None = Field(
        default=None,
        description="Integrated loudness measured on the file as written (decoded again); null for silence.",
    )
    true_peak_dbtp: float | None = Field(
        default=None, description="True peak measured on the file as written."
    )
    gain_db: float = Field(
        default=0.0, description="Gain applied by loudness normalisation (0 when skipped)."
    )
    variation: int = Field(default=1, ge=1, description="Which variation this is, 1..count.")
    seed: int | None = Field(
        default=None, ge=0, description="The seed of this variation (job seed + variation - 1)."
    )
    waveform: Waveform | None = Field(
        default=None, description="Peak envelope of the audio written (a few hundred points)."
    )
    loop: LoopInfo | None = Field(default=None, description="Loop jobs: how the loop was cut and its seam.")
    track: str | None = Field(
        default=None, description="Extract jobs: the stem this file is (vocals, drums, ...)."
    )
    analysis: Analysis | None = Field(
        default=None,
        description="Tempo, beats, key and loudness range measured on the file as written, and how far "
        "they are from what the job asked (absent in sidecars of older versions).",
    )

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        p = PurePosixPath(value)
        if p.is_absolute() or ".." in p.parts or "\\" in value or not value:
            raise ValueError("must be a plain path relative to outbox/")
        return value


class ReferenceInfo(_Strict):
    """Audio a job started from or followed, as read when the job ran."""

    role: Literal["continue_from", "melody", "repaint", "cover", "extract", "lego", "complete"] = Field(
        description="What the job did with it (an edit's source: repaint, cover, extract)."
    )
    path: str = Field(description="The reference as the job wrote it: library/<file> or outbox/<file>.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the file's bytes, hex.")
    duration_s: Seconds = Field(description="Its length in seconds.")
    sample_rate: int = Field(gt=0, description="Its samples per second.")
    channels: int = Field(gt=0, description="Its channel count.")
    used_s: Seconds | None = Field(
        default=None, description="Seconds of it the model was given (continue_from: its last seconds)."
    )


class HostInfo(_Strict):
    """The machine and software versions."""

    hostname: str = Field(description="Host name.")
    gpu: str | None = Field(default=None, description="GPU name, null on CPU.")
    torch: str | None = Field(default=None, description="torch version.")
    transformers: str | None = Field(default=None, description="transformers version.")
    dgx_music: str = Field(description="dgx-music version.")


class ErrorInfo(_Strict):
    """Why a job failed."""

    type: ErrorType = Field(description="Error category.")
    message: str = Field(description="What went wrong, for people.")
    details: list[ErrorDetail] = Field(default_factory=list, description="Per-field problems (invalid_job).")
    hint: str | None = Field(default=None, description="What to do about it.")


class AdapterInfo(_Strict):
    """The LoRA adapter a job ran with."""

    name: str = Field(description="Its name under the model's `adapters:` in the daemon's config.")
    source: str = Field(description="Where it was loaded from: a local path or a hub repo id.")
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="A local adapter: SHA-256 of its weights file."
    )
    revision: str | None = Field(default=None, description="A hub adapter: the revision asked for.")
    scale: float = Field(description="The strength it was applied with.")


class ResultSidecar(_Strict):
    """`outbox/<id>.json`: written last, after the audio, so its presence means the audio is complete."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Sidecar format version.")
    job_id: str = Field(description="The job's id (with -2, -3 ... when the name was taken).")
    status: Literal["completed"] = Field(default="completed", description="Always 'completed' here.")
    source_file: str = Field(description="Name of the job file as submitted.")
    submitted: AwareDatetime = Field(description="When the job was picked up (UTC).")
    started: AwareDatetime = Field(description="When generation started (UTC).")
    finished: AwareDatetime = Field(description="When the result was written (UTC).")
    timings: Timings = Field(description="Seconds spent per stage.")
    rtf: float = Field(
        ge=0, allow_inf_nan=False, description="Real-time factor: generate seconds / audio seconds."
    )
    request: Job = Field(description="The normalized job with every effective value, the seed included.")
    model: ModelInfo = Field(description="The model that made the audio.")
    outputs: list[OutputInfo] = Field(min_length=1, description="The audio files, one per variation.")
    peak_memory_bytes: int = Field(
        ge=0, description="Peak accelerator (or process) memory during generation."
    )
    host: HostInfo = Field(description="Machine and versions.")
    decoder: str | None = Field(
        default=None,
        description="The token decode loop that ran: dgx (ours) or transformers "
        "(generate; always for melody models).",
    )
    reproducibility: Reproducibility | None = Field(
        default=None, description="What reproduces these tokens (absent in sidecars of older versions)."
    )
    references: list[ReferenceInfo] = Field(
        default_factory=list,
        description="Reference audio the job used (continue_from, melody, an edit's source); "
        "empty for text only.",
    )
    adapter: AdapterInfo | None = Field(default=None, description="ACE-Step jobs: the LoRA adapter applied.")
    candidates: list[CandidateInfo] = Field(
        default_factory=list, description="Best-of-N jobs: every take's seed and scores; empty otherwise."
    )


class ErrorSidecar(_Strict):
    """`failed/<id>.error.json`, next to the untouched job file."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Sidecar format version.")
    job_id: str = Field(description="The job's id (from the file name when the file could not be read).")
    status: Literal["failed", "cancelled"] = Field(default="failed", description="failed or cancelled.")
    source_file: str = Field(description="Name of the job file as submitted.")
    submitted: AwareDatetime | None = Field(default=None, description="When the job was picked up (UTC).")
    started: AwareDatetime | None = Field(default=None, description="When work on it started (UTC).")
    finished: AwareDatetime | None = Field(default=None, description="When it was given up (UTC).")
    error: ErrorInfo = Field(description="What went wrong.")
    attempts: int = Field(default=1, ge=0, description="How many times the daemon tried the job.")
    timings: Timings | None = Field(default=None, description="Seconds spent per stage, where known.")
    request: Job | None = Field(default=None, description="The normalized job, when it was valid.")
    model: ModelInfo | None = Field(default=None, description="The model involved, when known.")
    host: HostInfo | None = Field(default=None, description="Machine and versions.")
