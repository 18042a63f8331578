"""What a bad setting is called, in the project's words rather than pydantic's: the keys allowed
where an unknown one stands (with the closest as "did you mean"), a wrong value said as what it
must be, and the `DGX_MUSIC_*` environment names that set nothing (a misspelt variable would
otherwise be ignored without a word: the environment is not only ours, so these warn, not fail).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from daemon.core.settings_sources import CONFIG_VAR, ENV_PREFIX
from jobspec.loader import show_value

Loc = tuple[str | int, ...]


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def keys_at(root: type[BaseModel], parent: Loc) -> list[str]:
    """The keys allowed in the mapping at `parent` (`("models", "small")` -> ModelSpec's fields)."""
    current: Any = root
    parts = list(parent)
    while parts:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(parts.pop(0)))
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) in (dict, Mapping):
            parts.pop(0)  # a name of the user's own (a model's name): its values share one type
            current = typing.get_args(current)[1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def closest(name: str, choices: list[str]) -> str | None:
    """The choice `name` most likely meant: the same letters without `_` first, then difflib."""
    squeeze = {c.replace("_", "").lower(): c for c in choices}
    if name.replace("_", "").lower() in squeeze:
        return squeeze[name.replace("_", "").lower()]
    found = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
    return next((c for c in choices if c.lower() == found[0]), None) if found else None


def unknown_key(root: type[BaseModel], loc: Loc) -> str:
    key = str(loc[-1])
    allowed = keys_at(root, loc[:-1])
    guess = closest(key, allowed)
    if guess:
        return f"unknown key '{key}' (did you mean '{guess}'?)"
    return (
        f"unknown key '{key}' (allowed here: {', '.join(sorted(allowed))})"
        if allowed
        else f"unknown key '{key}'"
    )


def env_name_hint(root: type[BaseModel], name: str) -> str:
    """For a `DGX_MUSIC_*` name that sets nothing: the name meant, else the rule."""
    upper = name.upper()
    rest = upper[len(ENV_PREFIX) :] if upper.startswith(ENV_PREFIX) else upper
    guess = closest(rest.split("__", 1)[0], [f.upper() for f in root.model_fields])
    if guess:
        return f"did you mean {ENV_PREFIX}{guess}{rest[len(rest.split('__', 1)[0]) :]}?"
    return f"settings are {ENV_PREFIX}<KEY> for the keys of `dgx-music config`, nested keys joined by __"


def unknown_environment_names(root: type[BaseModel], environ: Mapping[str, str]) -> list[str]:
    """`DGX_MUSIC_*` variables that name no setting (DGX_MUSIC_CONFIG picks the file)."""
    fields = {f.upper() for f in root.model_fields}
    out = []
    for name in environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper == CONFIG_VAR:
            continue
        if upper[len(ENV_PREFIX) :].split("__", 1)[0] not in fields:
            out.append(name)
    return sorted(out)


_MUST = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text",
    "path_type": "must be a path",
    "dict_type": "must be a mapping of `key: value` lines",
    "model_type": "must be a mapping of `key: value` lines",
    "list_type": "must be a list",
}


def value_message(err: Mapping[str, Any]) -> str:
    """One validation error of a value, as what the value must be and what it was."""
    kind, msg, value = str(err.get("type")), str(err.get("msg", "")), err.get("input")
    got = f", not {show_value(value)}" if "input" in err and not isinstance(value, (dict, list)) else ""
    if kind == "missing":
        return "is required here"
    if kind in _MUST:
        return _MUST[kind] + got
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    if msg.startswith("Input should be "):
        return "must be " + msg[len("Input should be ") :] + got
    return msg[:1].lower() + msg[1:] + got
