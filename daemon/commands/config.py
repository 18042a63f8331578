"""`dgx-music config [--config FILE] [--json] [--show-origin]`: the settings the daemon would use.

The same lookup as every command (--config, $DGX_MUSIC_CONFIG, ./.env, /etc/dgx-music/config.yaml),
the same sources and precedence as `serve`; --show-origin says which source set each value.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from daemon.commands._common import add_config_arg, config_path, exit_config_error
from daemon.core.config import ConfigError, load_settings_with_origins


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="print the effective settings (file, .env and DGX_MUSIC_* environment merged)",
        description="Print the settings serve would use. Precedence: environment > ./.env > .env beside the "
        "config file > the config file > defaults, merged key by key.",
    )
    add_config_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object, keys as in the config file")
    p.add_argument(
        "--show-origin",
        action="store_true",
        help="say where each value came from: default, file FILE:LINE, dotenv FILE:LINE VAR, environment VAR",
    )
    p.set_defaults(func=run)


def _leaves(values: Any, origins: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    if isinstance(values, dict) and values:
        rows: list[tuple[str, Any, str]] = []
        for key, value in values.items():
            rows += _leaves(value, origins[key], f"{prefix}{key}.")
        return rows
    return [(prefix.rstrip("."), values, origins)]


def run(args: argparse.Namespace) -> int:
    path = config_path(args)
    try:
        settings, origins = load_settings_with_origins(path)
    except ConfigError as exc:
        return exit_config_error(exc)
    values = settings.model_dump(mode="json", exclude_none=True)
    if args.json:
        document: dict[str, Any] = values
        if args.show_origin:
            document = {
                "config_file": str(path) if path else None,
                "settings": values,
                "origin": origins.tree(values),
            }
        print(json.dumps(document, indent=2))
        return 0
    print(f"# config file: {path if path is not None else 'none (defaults, .env and environment only)'}")
    rows = _leaves(values, origins.tree(values))
    for key, value, origin in rows:
        shown = json.dumps(value)
        print(f"{key} = {shown}" + (f"    # {origin}" if args.show_origin else ""))
    return 0
