"""Daemon settings: a YAML file, overridden by `DGX_MUSIC_*` environment variables and `.env`.

Precedence (highest first): explicit overrides passed in code, environment variables,
`.env` in the working directory, the YAML file, the defaults below. Unknown keys are refused
everywhere so a typo in `/etc/dgx-music/config.yaml` never silently falls back to a default.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_CONFIG_PATH = Path("/etc/dgx-music/config.yaml")
ENV_PREFIX = "DGX_MUSIC_"
MODEL_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        self.source = source
        self.key = key
        super().__init__(message)


class ModelSpec(BaseModel):
    """One model a job may name: a hub repository (+ revision) or a local directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = Field(default=None, description="Hugging Face hub repo id, e.g. facebook/musicgen-small")
    revision: str = Field(default="main", description="branch, tag or commit hash on the hub")
    path: Path | None = Field(default=None, description="a local checkpoint directory")

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
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        env_nested_delimiter="__",
        validate_default=True,
    )

    spool: Path = Field(default=Path("/var/lib/dgx-music"), description="inbox/ work/ outbox/ failed/ live below it")
    models: dict[str, ModelSpec] = Field(
        default_factory=lambda: {"small": ModelSpec(id="facebook/musicgen-small", revision="main")},
        description="the only models a job may name",
    )
    default_model: str = Field(default="small", description="model used when a job names none")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N (auto: CUDA when present, else CPU with a warning)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="auto: bfloat16 on GPUs that support it, else float16; float32 on CPU"
    )
    max_duration: float = Field(default=300.0, gt=0, le=3600, description="longest job accepted, seconds")
    max_job_bytes: int = Field(default=65536, ge=256, le=16 * 1024 * 1024, description="largest job file read, bytes")
    settle_s: float = Field(default=0.5, ge=0, le=600, description="polled files must stay unchanged this long")
    rescan_interval_s: float = Field(
        default=30.0, gt=0, le=86400, description="full inbox rescan (missed events, network filesystems), seconds"
    )
    watch: Literal["inotify", "poll"] = Field(default="inotify", description="poll for NFS/SMB inboxes")
    poll_interval_s: float = Field(default=1.0, gt=0, le=600, description="inbox listing interval in poll mode, seconds")
    heartbeat_interval_s: float = Field(
        default=5.0, gt=0, le=600, description="how often a daemon refreshes its state/daemon.<instance>.json heartbeat"
    )
    peer_timeout_s: float = Field(
        default=60.0, gt=0, le=86400,
        description="a daemon on another host whose heartbeat is older than this is dead: peers take over its jobs",
    )
    max_attempts: int = Field(default=2, ge=1, le=100, description="crashes a job may cause before it fails as crashed")
    idle_unload_s: float = Field(default=0.0, ge=0, description="0 keeps the model resident forever")
    job_timeout_s: float = Field(default=1800.0, gt=0, description="per-job generation time limit")
    stop_grace_s: float = Field(default=60.0, ge=0, description="on SIGTERM, how long the running job may finish")
    max_batch: int = Field(default=8, ge=1, le=64, description="rows decoded together (count x CFG share it)")
    window_s: float = Field(default=30.0, gt=0, le=30, description="model context window for long form")
    extend_stride_s: float = Field(default=18.0, gt=0, description="new audio per continuation window")
    warmup: bool = Field(default=True, description="run a short generation when a model loads")
    decoder: Literal["auto", "dgx", "transformers"] = Field(
        default="auto", description="token decode loop: our static-cache loop (dgx) or transformers generate"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )
    max_memory_gb: float = Field(default=30.0, gt=0, description="the seed's GPU memory budget")
    normalize_audio: bool = Field(default=True, description="apply the job's loudness target")

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

    @field_validator("max_duration", "settle_s", "rescan_interval_s", "job_timeout_s", "heartbeat_interval_s", "peer_timeout_s")
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
            raise ValueError("peer_timeout_s must be at least twice heartbeat_interval_s (one late beat is no death)")
        if self.extend_stride_s >= self.window_s:
            raise ValueError("extend_stride_s must be shorter than window_s (the rest is the overlap)")
        return self

    # The YAML file slots in between .env and the defaults.
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings)

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
    def failed(self) -> Path:
        return self.spool / "failed"

    @property
    def state_dir(self) -> Path:
        """Daemon-private state: running-job progress, cancel requests, attempt counters."""
        return self.spool / "state"


def _read_yaml_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (create it, or pass --config; see systemd/config.example.yaml)",
            source=str(path),
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}", source=str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}", source=str(path)) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got {type(data).__name__}", source=str(path))
    return data


def _source_of(key: str, path: Path | None, file_keys: set[str]) -> str:
    env_name = ENV_PREFIX + key.upper()
    if env_name in os.environ or any(k.startswith(env_name + "__") for k in os.environ):
        return f"environment variable {env_name}"
    if key in file_keys and path is not None:
        return str(path)
    if Path(".env").is_file():
        return f"{path or 'defaults'} or .env"
    return str(path) if path is not None else "defaults"


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read the YAML file at `path` (None: defaults only), then environment and `.env` on top.

    Raises ConfigError whose message names the offending key and where it came from.
    """
    file_data: dict[str, Any] = {}
    cfg_path = Path(path) if path is not None else None
    if cfg_path is not None:
        file_data = _read_yaml_file(cfg_path)
    # Environment beats the file: pass file values as the lowest-priority init data by
    # removing any key that the environment sets.
    env_keys = {k[len(ENV_PREFIX):].split("__")[0].lower() for k in os.environ if k.startswith(ENV_PREFIX)}
    env_keys.discard("config")
    init = {k: v for k, v in file_data.items() if k not in env_keys}
    init.update(overrides)
    try:
        return Settings(**init)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            top = str(err["loc"][0]) if err["loc"] else ""
            where = _source_of(top, cfg_path, set(file_data)) if top else (str(cfg_path) if cfg_path else "config")
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = f"unknown key (allowed: {', '.join(sorted(Settings.model_fields))})"
            lines.append(f"{where}: {loc}: {msg}")
        first_key = ".".join(str(p) for p in exc.errors()[0]["loc"]) if exc.errors() else None
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines), source=str(cfg_path), key=first_key) from exc


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
