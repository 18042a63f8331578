"""Pieces several subcommands share: the --config option and reading the settings."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from daemon.core.config import DEFAULT_CONFIG_PATH, ConfigError, Settings, load_settings


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"daemon config file (default: $DGX_MUSIC_CONFIG or {DEFAULT_CONFIG_PATH} when it exists)",
    )


def config_path(args: argparse.Namespace) -> Path | None:
    """The explicit --config, else $DGX_MUSIC_CONFIG, else the system file when present.

    None means defaults plus environment: handy on a workstation, and what `doctor` reports.
    """
    if args.config is not None:
        return args.config
    env = os.environ.get("DGX_MUSIC_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def settings_or_exit(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(config_path(args))
    except ConfigError as exc:
        print(f"dgx-music: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
