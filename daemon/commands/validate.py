"""`dgx-music validate FILE...`: check job files the way the daemon will, without running them."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from daemon.core.config import Settings
from daemon.core.memory import admission_refusal
from jobspec import DEFAULT_MAX_BYTES, DEFAULT_MAX_DURATION, ErrorDetail, JobSpecError, load_job_file

EXIT_OK = 0
EXIT_INVALID = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check job files (exit 0 when all are valid, 2 otherwise)",
        description="Check job files the way the daemon will: prints `file:line: field: message (hint)` "
        "for every problem, `file: ok (N jobs)` for good files. "
        "A directory means its *.yaml and *.yml files.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="job files (or directories of them)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument(
        "--max-duration",
        type=_positive_float,
        default=None,
        metavar="S",
        help="longest duration accepted, seconds "
        f"(default: the config's max_duration, else {DEFAULT_MAX_DURATION:g})",
    )
    parser.add_argument(
        "--max-bytes",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"largest job file accepted (default: the config's max_job_bytes, else {DEFAULT_MAX_BYTES})",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="daemon config to take the limits and the model names from (default: $DGX_MUSIC_CONFIG, "
        "from the environment or ./.env, else /etc/dgx-music/config.yaml when it exists)",
    )
    parser.set_defaults(func=run)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _expand(names: list[str]) -> list[str]:
    files: list[str] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() in (".yaml", ".yml") and not p.name.startswith(".")
            )
            files.extend(str(p) for p in found)
            if not found:
                files.append(name)  # reported as "no job files" below
        else:
            files.append(name)
    return files


def _check(name: str, *, max_bytes: int, max_duration: float, settings: Settings | None) -> dict[str, Any]:
    path = Path(name)
    if path.is_dir():
        errors = [ErrorDetail(loc="", line=None, msg="directory holds no *.yaml or *.yml job files")]
        return {"file": name, "ok": False, "jobs": [], "errors": errors}
    if not path.exists():
        errors = [ErrorDetail(loc="", line=None, msg="no such file")]
        return {"file": name, "ok": False, "jobs": [], "errors": errors}
    try:
        jobs = load_job_file(path, max_bytes=max_bytes, max_duration=max_duration)
    except JobSpecError as exc:
        return {"file": name, "ok": False, "jobs": [], "errors": exc.details}
    errors = []
    if settings is not None:
        models = set(settings.models)
        for job in jobs:
            if job.model is not None and job.model not in models:
                errors.append(
                    ErrorDetail(
                        loc="model",
                        line=None,
                        msg=f"job '{job.id}' names unknown model '{job.model}'",
                        hint="configured models: " + (", ".join(sorted(models)) or "none"),
                    )
                )
                continue
            # What the daemon refuses at admission: a key the model's family cannot honour, a job
            # whose memory estimate exceeds max_memory_gb.
            refusal = admission_refusal(
                set(job.model_fields_set),
                job.duration,
                job.count * job.candidates,  # the rows decoded
                job.model or settings.default_model,
                settings,
            )
            if refusal is not None:
                errors.append(
                    ErrorDetail(loc="model", line=None, msg=f"job '{job.id}': {refusal[0]}", hint=refusal[1])
                )
    return {"file": name, "ok": not errors, "jobs": [job.id for job in jobs], "errors": errors}


def _limits(args: argparse.Namespace) -> tuple[float, int, Settings | None] | int:
    """max_duration, max_job_bytes and the settings (model names and families), from the config every
    command reads (None: no config file, models are not checked)."""
    from daemon.commands._common import config_path, exit_config_error
    from daemon.core.config import ConfigError, load_settings

    path = config_path(args)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        return exit_config_error(exc)
    max_duration = args.max_duration if args.max_duration is not None else settings.max_duration
    max_bytes = args.max_bytes if args.max_bytes is not None else settings.max_job_bytes
    if path is None:
        # Said on stderr so stdout stays the report (and --json stays one document).
        print(
            "dgx-music validate: no config file "
            "(no --config, $DGX_MUSIC_CONFIG or /etc/dgx-music/config.yaml): "
            f"limits max_duration {max_duration:g} s, max_job_bytes {max_bytes}; model names are not checked",
            file=sys.stderr,
        )
        return max_duration, max_bytes, None
    return max_duration, max_bytes, settings


def run(args: argparse.Namespace) -> int:
    limits = _limits(args)
    if isinstance(limits, int):
        return EXIT_INVALID
    max_duration, max_bytes, settings = limits

    results = [
        _check(name, max_bytes=max_bytes, max_duration=max_duration, settings=settings)
        for name in _expand(args.files)
    ]
    all_ok = all(r["ok"] for r in results)
    if args.json:
        document = {
            "ok": all_ok,
            "files": [{**r, "errors": [e.model_dump() for e in r["errors"]]} for r in results],
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        for r in results:
            if r["ok"]:
                n = len(r["jobs"])
                print(f"{r['file']}: ok ({n} job{'s' if n != 1 else ''})")
            else:
                for detail in r["errors"]:
                    print(detail.format(r["file"]))
    return EXIT_OK if all_ok else EXIT_INVALID
