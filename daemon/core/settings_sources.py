"""Where the settings come from: the config file, `.env` files, the environment, the defaults.

pydantic-settings merges its sources key by key (nested mappings are deep-merged), so a
variable such as `DGX_MUSIC_MODELS__SMALL__REVISION=v2` changes one key of the file's
`models.small` and keeps everything else the file says. Order, highest first:

1. values passed in code (tests, `bench --tiny`),
2. the process environment (`DGX_MUSIC_<KEY>`, nested keys joined with `__`),
3. `./.env` (the working directory),
4. `.env` beside the config file (e.g. /etc/dgx-music/.env),
5. the config file, read by the strict YAML loader of the job language,
6. the defaults.

The working directory's `.env` wins over the one beside the file because it is the more
specific of the two: the one beside the file is shared by every run of that installation,
the working directory's belongs to whoever runs the command there.

`DGX_MUSIC_CONFIG` selects the file; it may be set in the environment or in `./.env` (never in
the `.env` beside the file, which is found only once the file is known).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
)

from jobspec.errors import JobSpecError
from jobspec.yamlsafe import LineMap, load_yaml_bytes

DEFAULT_CONFIG_PATH = Path("/etc/dgx-music/config.yaml")
ENV_PREFIX = "DGX_MUSIC_"
CONFIG_VAR = ENV_PREFIX + "CONFIG"
DOTENV_NAME = ".env"
# Far above any real config; a bound so a wrong --config (a log file, a device) is refused quickly.
MAX_CONFIG_BYTES = 1 << 20

Loc = tuple[str | int, ...]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file (and line) and the key."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        self.source = source
        self.key = key
        super().__init__(message)


# ---------------------------------------------------------------- which files


def _dotenv_lookup(path: Path, name: str) -> str | None:
    """The value of `name` in the dotenv file at `path` (names compared case-insensitively)."""
    if not path.is_file():
        return None
    for key, value in dotenv_values(path).items():
        if key.upper() == name and value:
            return value
    return None


def resolve_config_path(explicit: Path | None, *, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file every command reads: --config, else $DGX_MUSIC_CONFIG (environment,
    then ./.env), else /etc/dgx-music/config.yaml when it exists, else None (defaults only)."""
    if explicit is not None:
        return explicit
    env = os.environ if env is None else env
    chosen = env.get(CONFIG_VAR) or _dotenv_lookup(Path(DOTENV_NAME), CONFIG_VAR)
    if chosen:
        return Path(chosen)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def dotenv_files(config_file: Path | None) -> tuple[Path, ...]:
    """The `.env` files read, highest priority first (one file once, even when cwd = its dir)."""
    files = [Path(DOTENV_NAME).absolute()]  # absolute: origins and errors name the file read
    if config_file is not None:
        files.append(config_file.absolute().parent / DOTENV_NAME)
    unique: list[Path] = []
    seen: set[Path] = set()
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return tuple(unique)


@dataclasses.dataclass(frozen=True)
class SourcePlan:
    """What one load reads; a ContextVar carries it into `settings_customise_sources`."""

    config_file: Path | None = None
    env_files: tuple[Path, ...] = (Path(DOTENV_NAME),)
    # The file read once per load (`read_config_file`): the settings source and the origins share it.
    file_data: dict[str, Any] = dataclasses.field(default_factory=dict)
    file_lines: LineMap = dataclasses.field(default_factory=dict)

    @classmethod
    def for_file(cls, config_file: Path | None, env_files: tuple[Path, ...]) -> "SourcePlan":
        data, lines = read_config_file(config_file) if config_file is not None else ({}, {})
        return cls(config_file=config_file, env_files=env_files, file_data=data, file_lines=lines)


CURRENT_PLAN: ContextVar[SourcePlan] = ContextVar("dgx_music_settings_plan", default=SourcePlan())


# ---------------------------------------------------------------- the YAML file


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines())


def read_config_file(path: Path) -> tuple[dict[str, Any], LineMap]:
    """The file's mapping and the line of every key; ConfigError with file:line otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (create it, or pass --config; see systemd/config.example.yaml)",
            source=str(path),
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read config file: {exc.strerror or exc}", source=str(path)
        ) from exc
    try:
        if _only_comments(data.decode("utf-8-sig")):
            return {}, {}  # an empty config means the defaults
    except UnicodeDecodeError:
        pass  # the loader names the byte and its line
    try:
        return load_yaml_bytes(data, str(path), max_bytes=MAX_CONFIG_BYTES)
    except JobSpecError as exc:
        d = exc.details[0]
        where = f"{path}:{d.line}" if d.line is not None else str(path)
        what = f"{d.loc}: {d.msg}" if d.loc else d.msg
        if "mapping" in d.msg and "key: value" in d.msg:
            what = "the config must be a mapping of `key: value` lines"
        if "anchors" in d.msg or "tag" in d.msg:
            what += " (the config is plain YAML, read like a job file)"
        raise ConfigError(f"{where}: {what}", source=str(path), key=d.loc or None) from None


class YamlFileSource(PydanticBaseSettingsSource):
    """The config file as a settings source, below `.env` and above the defaults.

    Mapping fields the file leaves out start from their default value, so that a `__` override
    of one nested key (DGX_MUSIC_MODELS__SMALL__REVISION) merges into the default mapping too.
    """

    def __init__(self, settings_cls: type[BaseSettings], plan: SourcePlan) -> None:
        super().__init__(settings_cls)
        self.path = plan.config_file
        self.data: dict[str, Any] = plan.file_data
        self.lines: LineMap = plan.file_lines

    def get_field_value(
        self, field: Any, field_name: str
    ) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        merged = dict(self.data)
        for name, field in self.settings_cls.model_fields.items():
            if name in merged:
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, dict) and default:
                merged[name] = {
                    k: (v.model_dump(exclude_none=True) if hasattr(v, "model_dump") else v)
                    for k, v in default.items()
                }
        return merged


class DotEnvFileSource(DotEnvSettingsSource):
    """One `.env` file. Only DGX_MUSIC_* names are ours: other variables there (HF_HOME for the
    unit's EnvironmentFile=, say) are left alone, and DGX_MUSIC_CONFIG chose the file already.
    Unknown DGX_MUSIC_* names stay in the data, so validation refuses them by name."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls, env_file=path)
        self.path = path

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        prefix = ENV_PREFIX.lower()
        return {
            k: v
            for k, v in data.items()
            if k in self.settings_cls.model_fields or (k.startswith(prefix) and k != CONFIG_VAR.lower())
        }


class _Without(PydanticBaseSettingsSource):
    """A source minus the keys that code passed explicitly: those values are complete (a whole
    `models:` mapping, say) and replace, rather than merge into, what the file or environment says."""

    def __init__(self, inner: PydanticBaseSettingsSource, keys: frozenset[str]) -> None:
        super().__init__(inner.settings_cls)
        self.inner, self.keys = inner, keys

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return self.inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self.inner().items() if k not in self.keys}


def build_sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    plan = CURRENT_PLAN.get()
    dotenvs = tuple(DotEnvFileSource(settings_cls, f) for f in plan.env_files)
    lower = (env_settings, *dotenvs, YamlFileSource(settings_cls, plan))
    given = frozenset(getattr(init_settings, "init_kwargs", {}) or {})
    if given:
        lower = tuple(_Without(src, given) for src in lower)
    return (init_settings, *lower)


# ---------------------------------------------------------------- where a value came from


def _dotenv_line(path: Path, name: str) -> int | None:
    pattern = re.compile(rf"^\s*(?:export\s+)?{re.escape(name)}\s*=", re.I)
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if pattern.match(line):
                return number
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _holds(data: Any, loc: Loc) -> bool:
    """True when `data` sets `loc` itself or a value above it that is not a mapping."""
    for part in loc:
        if not isinstance(data, dict):
            return True
        if part not in data:
            return False
        data = data[part]
    return True


def _var_for(names: Mapping[str, Any], loc: Loc) -> str | None:
    """The variable among `names` that sets `loc`: the longest `DGX_MUSIC_A__B` matching it."""
    upper = {n.upper(): n for n in names}
    parts = [str(p) for p in loc]
    if parts and parts[0].upper().startswith(ENV_PREFIX):  # an unknown name kept whole
        return upper.get(parts[0].upper())
    for end in range(len(parts), 0, -1):
        name = ENV_PREFIX + "__".join(parts[:end]).upper()
        if name in upper:
            return upper[name]
    return None


@dataclasses.dataclass
class Origins:
    """Each source's data, highest priority first, to say where a value (or an error) came from."""

    overrides: dict[str, Any]
    env: dict[str, Any]
    dotenvs: list[tuple[Path, dict[str, Any]]]
    file: Path | None
    file_data: dict[str, Any]
    file_lines: LineMap

    @classmethod
    def collect(
        cls, settings_cls: type[BaseSettings], plan: SourcePlan, overrides: dict[str, Any]
    ) -> "Origins":
        return cls(
            overrides=overrides,
            env=EnvSettingsSource(settings_cls)(),
            dotenvs=[(f, DotEnvFileSource(settings_cls, f)()) for f in plan.env_files if f.is_file()],
            file=plan.config_file,
            file_data=plan.file_data,
            file_lines=plan.file_lines,
        )

    def where(self, loc: Loc) -> tuple[str, str]:
        """(kind, place): ("environment", "DGX_MUSIC_X"), ("dotenv", "/srv/.env:2 DGX_MUSIC_X"),
        ("file", "/etc/dgx-music/config.yaml:3"), ("override", "code"), ("default", "")."""
        if _holds(self.overrides, loc):
            return "override", "passed in code"
        if _holds(self.env, loc):
            return "environment", _var_for(os.environ, loc) or ENV_PREFIX + str(loc[0]).upper()
        for path, data in self.dotenvs:
            if _holds(data, loc):
                name = _var_for(dotenv_values(path), loc) or ENV_PREFIX + str(loc[0]).upper()
                line = _dotenv_line(path, name)
                return "dotenv", f"{path}:{line} {name}" if line else f"{path} {name}"
        if self.file is not None and _holds(self.file_data, loc):
            for end in range(len(loc), 0, -1):
                line = self.file_lines.get(tuple(loc[:end]))
                if line is not None:
                    return "file", f"{self.file}:{line}"
            return "file", str(self.file)
        return "default", ""

    def describe(self, loc: Loc) -> str:
        """For --show-origin: `default`, `file /etc/x.yaml:3`, `dotenv ./.env:1 DGX_MUSIC_X`,
        `environment DGX_MUSIC_X`."""
        kind, place = self.where(loc)
        return f"{kind} {place}" if place and kind != "override" else kind

    def tree(self, values: Any, loc: Loc = ()) -> Any:
        """The origin of every leaf of `values`, in the same shape."""
        if isinstance(values, dict) and values:
            return {k: self.tree(v, (*loc, k)) for k, v in values.items()}
        return self.describe(loc)
