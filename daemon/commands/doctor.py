"""`dgx-music doctor [--config FILE] [--json]`: check the GPU, torch, config, spool and models."""

from __future__ import annotations

import argparse
from pathlib import Path

from daemon.core.config import DEFAULT_CONFIG_PATH, resolve_config_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check that this machine can run the daemon (exit 1 when something required is missing)",
        description="Check Python, torch and CUDA, the GPU (name, compute capability, kernels, memory, bf16, "
        "a tensor check), the config, the spool and every configured model. Each check is ok, WARN or FAIL; "
        "every non-ok check says how to fix it. Exit 1 when any check fails.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"daemon config to check (default: $DGX_MUSIC_CONFIG, from the environment or ./.env, "
        f"else {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list of {name, status, detail, fix}"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from daemon.ops.doctor import doctor  # imports torch: only when the command runs

    # The file serve would read; without any, the system file, so that its absence is reported.
    return doctor(resolve_config_path(args.config) or DEFAULT_CONFIG_PATH, as_json=args.json)
