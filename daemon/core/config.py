"""Daemon settings: a YAML file, `.env` files and `DGX_MUSIC_*` environment variables.

Precedence (highest first): values passed in code, the environment, `./.env`, the `.env`
beside the config file, the YAML file, the defaults below; merged key by key by
pydantic-settings (daemon/core/settings_sources.py has the sources). Unknown keys are refused
everywhere, naming the key and where it was set, so a typo in `/etc/dgx-music/config.yaml`
never silently falls back to a default.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from daemon.core.config_messages import env_name_hint, unknown_environment_names, unknown_key, value_message
from daemon.core.settings_sources import (
    CURRENT_PLAN,
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    ConfigError,
    Origins,
    SourcePlan,
    build_sources,
    dotenv_files,
    resolve_config_path,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "ConfigError",
    "ModelSpec",
    "Settings",
    "load_settings",
    "load_settings_with_origins",
    "resolve_config_path",
    "config_table_markdown",
]

log = logging.getLogger(__name__)

MODEL_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class AdapterSpec(BaseModel):
    """A LoRA adapter of an ACE-Step model: a local directory or file, or a hub repo + revision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path | None = Field(
        default=None, description="a local LoRA: a .safetensors file, or a directory holding one"
    )
    id: str | None = Field(default=None, description="Hugging Face hub repo id of the LoRA")
    revision: str = Field(default="main", description="branch, tag or commit hash on the hub")
    scale: float = Field(
        default=1.0, ge=0.0, le=4.0, allow_inf_nan=False, description="its strength when a job gives none"
    )

    @model_validator(mode="after")
    def _one_source(self) -> "AdapterSpec":
        if (self.id is None) == (self.path is None):
            raise ValueError("give exactly one of 'id' (hub repo) or 'path' (local file or directory)")
        return self


class ModelSpec(BaseModel):
    """One model a job may name: a hub repository (+ revision) or a local directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = Field(default=None, description="Hugging Face hub repo id, e.g. facebook/musicgen-small")
    revision: str = Field(default="main", description="branch, tag or commit hash on the hub")
    path: Path | None = Field(default=None, description="a local checkpoint directory")
    family: Literal["musicgen", "ace-step"] | None = Field(
        default=None,
        description="musicgen or ace-step; omitted: read from the checkpoint (model_index.json naming "
        "AceStepPipeline: ace-step; a MusicGen config.json: musicgen)",
    )
    license: str | None = Field(
        default=None,
        description="the weights' licence recorded in every sidecar (default: the model card's `license`)",
    )

    adapters: dict[str, AdapterSpec] = Field(
        default_factory=dict,
        description="ACE-Step models: LoRA adapters a job may name with `adapter:`, by name",
    )

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if (self.id is None) == (self.path is None):
            raise ValueError("give exactly one of 'id' (hub repo) or 'path' (local directory)")
        return self

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else str(self.id)


class Settings(BaseSettings):
    """Everything the daemon reads at start and on SIGHUP."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        env_nested_delimiter="__",
        validate_default=True,
    )

    spool: Path = Field(
        default=Path("/var/lib/dgx-music"),
        description="inbox/ work/ outbox/ failed/ library/ state/ live below it",
    )
    models: dict[str, ModelSpec] = Field(
        default_factory=lambda: {"small": ModelSpec(id="facebook/musicgen-small", revision="main")},
        description="the only models a job may name",
    )
    default_model: str = Field(default="small", description="model used when a job names none")
    device: str = Field(
        default="auto",
        description="auto, cpu, cuda or cuda:N (auto: CUDA when present, else CPU with a warning)",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto",
        description="auto: bfloat16 on GPUs that support it, else float16; on the CPU bfloat16 where it "
        "computes it natively (AVX512-BF16, AMX, Arm BF16), else float32",
    )
    max_duration: float = Field(default=300.0, gt=0, le=3600, description="longest job accepted, seconds")
    max_job_bytes: int = Field(
        default=65536, ge=256, le=16 * 1024 * 1024, description="largest job file read, bytes"
    )
    settle_s: float = Field(
        default=0.5, ge=0, le=600, description="polled files must stay unchanged this long"
    )
    rescan_interval_s: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="full inbox rescan (missed events, network filesystems), seconds",
    )
    watch: Literal["inotify", "poll"] = Field(default="inotify", description="poll for NFS/SMB inboxes")
    poll_interval_s: float = Field(
        default=1.0, gt=0, le=600, description="inbox listing interval in poll mode, seconds"
    )
    heartbeat_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="how often a daemon refreshes its state/daemon.<instance>.json heartbeat",
    )
    peer_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="a daemon on another host whose heartbeat is older than this is dead: "
        "peers take over its jobs",
    )
    max_attempts: int = Field(
        default=2, ge=1, le=100, description="crashes a job may cause before it fails as crashed"
    )
    idle_unload_s: float = Field(default=0.0, ge=0, description="0 keeps the model resident forever")
    job_timeout_s: float = Field(default=1800.0, gt=0, description="per-job generation time limit")
    stop_grace_s: float = Field(
        default=60.0, ge=0, description="on SIGTERM, how long the running job may finish"
    )
    max_batch: int = Field(default=8, ge=1, le=64, description="rows decoded together (count x CFG share it)")
    window_s: float = Field(default=30.0, gt=0, le=30, description="model context window for long form")
    extend_stride_s: float = Field(default=18.0, gt=0, description="new audio per continuation window")
    warmup: bool = Field(default=True, description="run a short generation when a model loads")
    decoder: Literal["auto", "dgx", "transformers"] = Field(
        default="auto", description="token decode loop: our static-cache loop (dgx) or transformers generate"
    )
    batch_invariant: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="decode at fixed shapes so a job's output never depends on its batch mates (dgx "
        "decoder: each job at its own size, one row per call, each row's own text length; ACE-Step: "
        "every call at max_batch rows); auto: on with CUDA graphs (ACE-Step: on CUDA), off on the CPU "
        "(whose loops compute rows alone); off: a batch decodes in one call (faster for full batches)",
    )
    kernels: Literal["auto", "triton", "aten"] = Field(
        default="auto",
        description="dgx decoder: the step's layer norms fused into the matmuls after them (triton: 8 "
        "kernels a layer) or plain PyTorch ops (aten: 13); auto: triton on CUDA when it imports and "
        "passes its check on the loaded model, aten otherwise",
    )
    compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="ACE-Step models: the DiT (the denoising transformer) runs under torch.compile "
        "(inductor, dynamic shapes: one compile serves every song length), compiled during the warm-up "
        "at load (warmup false: at the first song); auto: on with CUDA, off on the CPU; a compile that "
        "fails leaves the DiT eager and the decode setup says why (compile: failed)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )
    max_reference_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=2**34,
        description="largest reference audio file (continue_from, melody) a job may name, bytes",
    )
    max_reference_s: float = Field(
        default=600.0, gt=0, le=7200, description="longest reference audio a job may name, seconds"
    )
    max_memory_gb: float = Field(
        default=30.0,
        gt=0,
        description="the memory budget, GiB: admission and validate refuse (invalid_job, saying what "
        "would fit) a job whose estimate exceeds it: the model's weight files + count x one variation's "
        "working set (MusicGen: the key/value cache of one window; ACE-Step: the DiT's activations over "
        "the song) + 0.75 GiB per job; bench and doctor check the GPU against it",
    )
    normalize_audio: bool = Field(default=True, description="apply the job's loudness target")
    retention_days: float | None = Field(
        default=None,
        gt=0,
        description="remove whole results from outbox/ and failed/ this many days old (unset: keep all)",
    )
    page_max_jobs: int = Field(
        default=200,
        ge=0,
        le=100_000,
        description="jobs on outbox/index.html, newest first (0: no page); older ones stay on disk",
    )

    @field_validator("models")
    @classmethod
    def _model_names(cls, v: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        if not v:
            raise ValueError("at least one model must be configured")
        for name in v:
            if not re.match(MODEL_NAME_RE, name):
                raise ValueError(f"model name {name!r} must match {MODEL_NAME_RE}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda|cuda:\d+", v):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return v

    @field_validator(
        "max_duration",
        "settle_s",
        "rescan_interval_s",
        "job_timeout_s",
        "heartbeat_interval_s",
        "peer_timeout_s",
    )
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "Settings":
        if self.default_model not in self.models:
            raise ValueError(
                f"default_model {self.default_model!r} is not one of the configured models: "
                f"{', '.join(sorted(self.models))}"
            )
        if self.heartbeat_interval_s * 2 > self.peer_timeout_s:
            raise ValueError(
                "peer_timeout_s must be at least twice heartbeat_interval_s (one late beat is no death)"
            )
        if self.extend_stride_s >= self.window_s:
            raise ValueError("extend_stride_s must be shorter than window_s (the rest is the overlap)")
        return self

    # Code overrides > environment > ./.env > .env beside the file > the YAML file > defaults.
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return build_sources(settings_cls, init_settings, env_settings)

    # Paths below the spool, in one place so no module hard-codes them.
    @property
    def inbox(self) -> Path:
        return self.spool / "inbox"

    @property
    def work(self) -> Path:
        return self.spool / "work"

    @property
    def outbox(self) -> Path:
        return self.spool / "outbox"

    @property
    def library(self) -> Path:
        """Reference audio users keep for continue_from / melody; the daemon only reads it."""
        return self.spool / "library"

    @property
    def failed(self) -> Path:
        return self.spool / "failed"

    @property
    def state_dir(self) -> Path:
        """Daemon-private state: running-job progress, cancel requests, attempt counters."""
        return self.spool / "state"


def _error_lines(exc: ValidationError, origins: Origins) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        kind, place = origins.where(loc) if loc else ("default", "")
        where = (
            place if kind not in ("default", "override") else ("defaults" if kind == "default" else "code")
        )
        shown = ".".join(str(p) for p in loc) or "(root)"
        msg = value_message(err)
        if loc and msg.startswith(f"{loc[-1]} "):
            msg = msg[len(str(loc[-1])) + 1 :]  # a validator's own message names its field already
        if err["type"] == "extra_forbidden":
            if kind in ("dotenv", "environment"):
                shown = place.rsplit(" ", 1)[-1]
                where = place.rsplit(" ", 1)[0] if kind == "dotenv" else "environment"
                msg = f"unknown setting ({env_name_hint(Settings, shown)})"
            else:
                msg = unknown_key(Settings, loc)
        elif kind == "environment":
            where = f"environment variable {place}"
        lines.append(f"{where}: {shown}: {msg}")
    return lines


def _warn_unknown_environment() -> None:
    for name in unknown_environment_names(Settings, os.environ):
        log.warning(
            "environment variable %s sets nothing and is ignored (%s)", name, env_name_hint(Settings, name)
        )


def load_settings_with_origins(path: Path | str | None = None, **overrides: Any) -> tuple[Settings, Origins]:
    """The settings and, for each value, the source it came from (`dgx-music config --show-origin`)."""
    cfg_path = Path(path) if path is not None else None
    plan = SourcePlan.for_file(cfg_path, dotenv_files(cfg_path))  # ConfigError with file:line
    token = CURRENT_PLAN.set(plan)
    try:
        origins = Origins.collect(Settings, plan, overrides)
        _warn_unknown_environment()
        try:
            return Settings(**overrides), origins
        except ValidationError as exc:
            lines = _error_lines(exc, origins)
            first_key = ".".join(str(p) for p in exc.errors()[0]["loc"]) if exc.errors() else None
            raise ConfigError(
                "invalid configuration:\n  " + "\n  ".join(lines),
                source=str(cfg_path) if cfg_path else None,
                key=first_key,
            ) from exc
    finally:
        CURRENT_PLAN.reset(token)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read the YAML file at `path` (None: no file), with `.env` files and the environment on top.

    Raises ConfigError whose message names the offending key and where it came from.
    """
    return load_settings_with_origins(path, **overrides)[0]


def config_table_markdown() -> str:
    """The README's configuration table, rendered from the fields (a test keeps them in sync)."""
    rows = ["| Key | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, dict):
            shown = "see below" if default else "{}"
        elif isinstance(default, Path):
            shown = str(default)
        else:
            shown = repr(default) if isinstance(default, str) else str(default)
        rows.append(f"| `{name}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)
