"""The values passed between the stages: what the worker asks of the engine and what it gets back.

The queue builds a `GenerationRequest` per job, the engine answers with a `GenerationResult` and
reports `Progress` while it decodes; `LoadedModelInfo` is the sidecar's `model` block (with the
`DecodeSetup` the model decodes with) and `EngineStats` what `status` shows. `Generated` is what the
queue hands the outbox for one job. Plain frozen-where-possible dataclasses, no torch: any stage may
import them without pulling in the engine, and none of them names a model family's internals.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from jobspec import Job
from jobspec.sidecar import ReferenceInfo, Timings

if TYPE_CHECKING:
    import numpy as np

    from daemon.core.pcm import Pcm

# Effective seeds live in 0..2**63-1; variation and long-form window offsets wrap modulo this.
SEED_MOD = 2**63


@dataclass(frozen=True, eq=False)
class AudioPrompt:
    """Reference audio handed to the engine: samples [channels, frames] float32 at `sample_rate`.

    The engine resamples and down- or up-mixes it to what the model needs."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return self.samples.shape[-1] / float(self.sample_rate)


@dataclass(frozen=True, eq=False)
class EditTask:
    """A song to edit (ACE-Step): `kind` repaint (seconds `start`..`end`, None: to the end),
    cover (`strength` 0..1) or extract (one output row per name in `tracks`)."""

    kind: str
    source: AudioPrompt
    start: float = 0.0
    end: float | None = None
    strength: float = 1.0
    tracks: tuple[str, ...] = ()  # extract: one row each; lego: the one new track; complete: its classes


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to render `count` times. Sampling defaults are MusicGen/audiocraft's.

    `sections` ((prompt, seconds), ...) give each long-form window the text of the section it falls
    in (`prompt` and `duration` then stand for all of them). `continue_from`: the result starts with
    this audio's last seconds (at most the window minus the stride) and is `duration` long in all.
    `melody`: chroma conditioning, melody models only. `bpm`, `key`, `time_signature`: what the job
    asks of the music, family-neutral (normalised key names, jobspec.music).
    """

    prompt: str
    duration: float
    count: int = 1
    seed: int | None = None
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_coef: float = 3.0
    greedy: bool = False
    sections: tuple[tuple[str, float], ...] = ()
    continue_from: AudioPrompt | None = field(default=None, compare=False)
    melody: AudioPrompt | None = field(default=None, compare=False)
    # What the job asks of the music (jobspec.music): each family honours them its own way.
    bpm: int | None = None
    key: str | None = None
    time_signature: str | None = None
    # A song with vocals (ACE-Step): words to sing and their language, denoising steps and guidance
    # (None: the checkpoint's defaults).
    lyrics: str | None = None
    language: str | None = None
    steps: int | None = None
    guidance: float | None = None
    edit: EditTask | None = field(default=None, compare=False)
    # A LoRA adapter of the model (its config's name) and its strength (None: the config's).
    adapter: str | None = None
    adapter_scale: float | None = None

    @property
    def conditioned(self) -> bool:
        """True when the request needs a decode call of its own (sections or reference audio)."""
        return bool(self.sections) or self.continue_from is not None or self.melody is not None

    def __post_init__(self) -> None:
        if not self.prompt or not self.prompt.strip():
            raise ValueError("prompt must not be empty")
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"duration must be a positive number of seconds, got {self.duration!r}")
        if self.count < 1:
            raise ValueError(f"count must be at least 1, got {self.count}")
        if self.seed is not None and not 0 <= self.seed < SEED_MOD:
            raise ValueError(f"seed must be in 0..2**63-1, got {self.seed}")
        if not self.greedy and not self.temperature > 0:
            raise ValueError("temperature must be > 0 (use greedy: true for argmax decoding)")
        if self.top_k < 0 or not 0.0 <= self.top_p <= 1.0:
            raise ValueError("top_k must be >= 0 and top_p within 0..1 (0 turns either filter off)")
        if self.sections and not math.isclose(sum(d for _, d in self.sections), self.duration, abs_tol=1e-6):
            raise ValueError("the sections must add up to the duration")


@dataclass
class Progress:
    """Decoding progress of one `generate` call, in decoding steps (one audio frame each)."""

    frames_done: int
    frames_total: int
    elapsed_s: float

    @property
    def fraction(self) -> float:
        if self.frames_total <= 0:
            return 0.0
        return min(1.0, max(0.0, self.frames_done / self.frames_total))


@dataclass(frozen=True)
class DecodeSetup:
    """How a loaded model decodes: decided once, when it is loaded (or the configuration reloaded),
    and never changed while it is resident. What `status`, the sidecar, `doctor` and `bench` report.

    `family` is the model family (musicgen, ...) and `decoder` the loop that runs (dgx,
    transformers, ...). The rest is what a family reports of itself, None where it has no such
    choice: `capture` (CUDA graphs captured: on, off, or failed, the reason in `capture_error`),
    `compile` (the step under torch.compile: on, off, or failed, the reason in `compile_error`),
    `rows` (the fixed row count of every decode call, batch invariance), `kernels` (which kernels
    the step runs), `fallback` (why the configured decoder is not the one that runs) and
    `load_check` (what the check at load time found).
    """

    family: str
    decoder: str
    capture: str | None = None
    capture_error: str | None = None
    compile: str | None = None
    compile_error: str | None = None
    rows: int | None = None
    kernels: str | None = None
    batch_invariant: bool = False
    fallback: str | None = None
    load_check: str | None = None

    def with_capture_failed(self, reason: str) -> DecodeSetup:
        """The setup after a capture failed: decoding goes on uncaptured, and says so."""
        return DecodeSetup(**{**asdict(self), "capture": "failed", "capture_error": reason})

    def with_compile_failed(self, reason: str) -> DecodeSetup:
        """The setup after a compile failed: the step runs eager, and says so."""
        return DecodeSetup(**{**asdict(self), "compile": "failed", "compile_error": reason})

    def report(self) -> dict[str, Any]:
        """The fields that apply (None left out), for status, the sidecar, doctor and bench."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def setup_summary(setup: dict[str, Any]) -> str:
    """One line for a person from `DecodeSetup.report()`: "dgx (capture on, 1 row per call, ...)"."""
    facts = []
    for step in ("capture", "compile"):  # each on, off, or failed with its `<step>_error`
        if setup.get(step):
            error = setup.get(f"{step}_error")
            facts.append(f"{step} {setup[step]}" + (f": {error}" if error else ""))
    if setup.get("rows"):
        rows = setup["rows"]
        facts.append(f"{rows} row{'' if rows == 1 else 's'} per call")
    if setup.get("kernels"):
        facts.append(f"{setup['kernels']} kernels")
    if setup.get("fallback"):
        facts.append(f"because {setup['fallback']}")
    return f"{setup.get('decoder')}" + (f" ({', '.join(facts)})" if facts else "")


@dataclass(frozen=True)
class LoadedModelInfo:
    name: str
    source: str  # hub repo id or local directory
    revision: str  # commit hash, or "local:<sha256>" for a directory
    dtype: str
    device: str
    parameters: int
    sample_rate: int
    channels: int
    frame_rate: float  # codec frames per second = sample_rate / prod(upsampling_ratios)
    load_s: float
    backend: str = "transformers"
    setup: DecodeSetup | None = None
    family: str = "musicgen"
    license: str | None = None  # the weights' licence (model card or config); None when unknown

    def sidecar_fields(self) -> dict[str, Any]:
        """The sidecar's `model` block (jobspec.sidecar.ModelInfo)."""
        return {
            "name": self.name,
            "family": self.family,
            "license": self.license,
            "source": self.source,
            "revision": self.revision,
            "dtype": self.dtype,
            "device": self.device,
            "parameters": self.parameters,
            "decoder": self.backend,
            "setup": self.setup.report() if self.setup is not None else None,
        }


@dataclass
class GenerationResult:
    # One clip per variation, float32 [channels, samples] on disk (daemon.core.pcm): the audio
    # stage reads them a block at a time, so a job's audio is never in memory whole.
    rows: tuple[Pcm, ...]
    sample_rate: int
    seed: int  # effective seed; variation i used seed + i
    generate_s: float
    peak_memory_bytes: int
    model: LoadedModelInfo
    request: GenerationRequest | None = None
    decoder: str | None = None  # the decode loop that ran (melody jobs always use transformers generate)
    # What reproduces the tokens (jobspec.sidecar.Reproducibility's fields, less `requires`).
    reproducibility: dict[str, Any] | None = None
    continued_s: float = 0.0  # seconds of the continue_from audio the result starts with
    adapter: dict[str, Any] | None = None  # the LoRA adapter applied (jobspec.sidecar.AdapterInfo's fields)

    @property
    def samples(self) -> int:
        """Samples per channel of each variation."""
        return self.rows[0].samples if self.rows else 0

    @property
    def audio(self) -> np.ndarray:
        """Every variation in memory, float32 [count, channels, samples]: for short clips and tools;
        the daemon's own stages read `rows` block by block."""
        import numpy as np

        return np.stack([row.array() for row in self.rows])

    @property
    def audio_seconds(self) -> float:
        return len(self.rows) * self.samples / self.sample_rate

    @property
    def rtf(self) -> float:
        """Generation seconds per second of audio produced (all variations)."""
        return self.generate_s / self.audio_seconds if self.audio_seconds else 0.0


@dataclass(frozen=True)
class Generated:
    """One job's generated audio on its way from the queue to the outbox: everything `publish`
    writes, and nothing of the queue's own bookkeeping."""

    job_id: str
    job: Job  # normalized, its model resolved
    source_file: str  # the job file's name in inbox/ ("band/x.yaml" from a folder)
    submitted: float  # time.time() of the job file's arrival
    started: float  # time.time() the job's generation began
    result: GenerationResult
    timings: Timings  # queue_s, model_load_s, generate_s; publish fills in the rest
    batch_audio_s: float | None = None  # audio seconds of the decode batch, when shared with other jobs
    references: tuple[ReferenceInfo, ...] = ()


@dataclass
class EngineStats:
    model: str | None
    source: str | None
    revision: str | None
    device: str | None
    dtype: str | None
    parameters: int
    backend: str | None
    loads: int = 0
    jobs: int = 0
    failed_jobs: int = 0
    audio_seconds: float = 0.0
    generate_seconds: float = 0.0
    mean_rtf: float = 0.0  # total generation seconds / total audio seconds
    peak_memory_bytes: int = 0
    last_used_monotonic: float | None = None
    loaded: bool = False  # whether `model` is resident now (it may have been unloaded when idle)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
