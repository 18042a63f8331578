"""Pieces several subcommands share: the --config option and reading the settings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.core.config import DEFAULT_CONFIG_PATH, ConfigError, Settings, load_settings, resolve_config_path
from daemon.core.errors import ExitCode


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"daemon config file (default: $DGX_MUSIC_CONFIG, from the environment or ./.env, "
        f"else {DEFAULT_CONFIG_PATH} when it exists)",
    )


def config_path(args: argparse.Namespace) -> Path | None:
    """The explicit --config, else $DGX_MUSIC_CONFIG (environment, then ./.env), else the system
    file when present. None means defaults plus `.env` and environment."""
    return resolve_config_path(getattr(args, "config", None))


def exit_config_error(exc: ConfigError) -> int:
    print(f"dgx-music: {exc}", file=sys.stderr)
    return int(ExitCode.USAGE)


def settings_or_exit(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(config_path(args))
    except ConfigError as exc:
        raise SystemExit(exit_config_error(exc)) from None
