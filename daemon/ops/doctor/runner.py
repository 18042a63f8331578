"""Every check in reading order, the report (table or JSON) and the exit code."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from daemon.ops.doctor.checks import Check, fail
from daemon.ops.doctor.model_checks import check_model
from daemon.ops.doctor.platform_checks import (
    check_cuda,
    check_device,
    check_diffusers,
    check_gpu,
    check_host_memory,
    check_python,
    check_torch,
)
from daemon.ops.doctor.spool_checks import check_config, check_decode_setup, check_spool
from daemon.ops.doctor.systemd_checks import check_systemd


def _guard(name: str, fn: Callable[[], Check | list[Check]]) -> list[Check]:
    """Run one check; an unexpected exception becomes a failed check, not a traceback."""
    try:
        result = fn()
    except Exception as exc:  # doctor must report every problem it meets, not stop at the first
        return [
            fail(
                name,
                f"the check itself crashed: {type(exc).__name__}: {exc}",
                "report this as a dgx-music bug, with the output of dgx-music doctor --json",
            )
        ]
    return result if isinstance(result, list) else [result]


def run_checks(config_path: Path | str | None) -> list[Check]:
    """Every check, in the order a person fixing a fresh install should read them."""
    checks: list[Check] = []
    checks += _guard("python", check_python)
    torch_checks = _guard("torch", check_torch)
    checks += torch_checks
    checks += _guard("diffusers", check_diffusers)
    config_check, settings = check_config(Path(config_path) if config_path is not None else None)
    if torch_checks[0].status != "fail":
        checks += _guard("cuda", lambda: check_cuda(settings))
        checks += _guard("gpu", lambda: check_gpu(settings))
        checks += _guard("host memory", check_host_memory)
        checks += _guard("device", lambda: check_device(settings))
    checks.append(config_check)
    if settings is not None:
        checks += _guard("spool", lambda: check_spool(settings))
        for name, spec in settings.models.items():
            checks += _guard(f"model {name}", lambda n=name, s=spec: check_model(n, s))
        checks += _guard("decode setup", lambda: check_decode_setup(settings))
    checks += _guard("systemd-python", check_systemd)
    return checks


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == "fail" for c in checks) else 0


def format_table(checks: list[Check]) -> str:
    """An aligned table: status, check, detail; the fix on its own line under a non-ok row."""
    width = max([len(c.name) for c in checks] + [len("CHECK")])
    label = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}
    lines = [f"{'STATUS':<6}  {'CHECK':<{width}}  DETAIL"]
    indent = " " * (6 + 2 + width + 2)
    for c in checks:
        detail_lines = c.detail.splitlines() or [""]
        lines.append(f"{label[c.status]:<6}  {c.name:<{width}}  {detail_lines[0]}")
        lines.extend(indent + d for d in detail_lines[1:])
        if c.fix:
            lines.append(f"{indent}fix: {c.fix}")
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("ok", "warn", "fail")}
    lines.append("")
    lines.append(f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s)")
    return "\n".join(lines)


def format_json(checks: list[Check]) -> str:
    return json.dumps([c.as_dict() for c in checks], indent=2)


@contextlib.contextmanager
def _quiet_device_warnings() -> Iterator[None]:
    """devices.resolve_device logs the CPU fallback; doctor reports it as a check instead."""
    import logging

    logger = logging.getLogger("daemon.engine.devices")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def doctor(config_path: Path | str | None, *, as_json: bool = False, out: Any = None) -> int:
    """Run every check, print the report, return the exit code (1 when a check failed)."""
    out = out if out is not None else sys.stdout
    with _quiet_device_warnings():
        checks = run_checks(config_path)
    print(format_json(checks) if as_json else format_table(checks), file=out)
    return exit_code(checks)
