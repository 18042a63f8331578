"""The config every command reads, and the spool below it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from daemon.core.config import ConfigError, Settings, load_settings
from daemon.ops.doctor.checks import Check, fail, ok, warn
from daemon.ops.doctor.checks import gib as _gib
from daemon.ops.doctor.checks import user_name as _user
from daemon.spool.layout import SPOOL_DIRS as SPOOL_SUBDIRS

LOW_DISK_FREE_BYTES = 1 << 30


def check_config(path: Path | None) -> tuple[Check, Settings | None]:
    where = str(path) if path is not None else "defaults + DGX_MUSIC_* environment"
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        if path is not None and not path.exists():
            fix = f"create {path} from systemd/config.example.yaml, or pass --config FILE"
        else:
            fix = "fix the named key (the example: systemd/config.example.yaml)"
        return fail("config", f"{where}: {exc}" if path is None else str(exc), fix), None
    models = ", ".join(sorted(settings.models))
    return ok(
        "config", f"{where}: models {models}, default {settings.default_model}, device {settings.device}"
    ), settings


def _writable(directory: Path) -> str | None:
    """None when a file can be created and removed in `directory`, else the error."""
    probe = directory / f".doctor.{os.getpid()}.tmp"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_spool(settings: Settings) -> Check:
    spool = settings.spool
    user = _user()
    mkfix = (
        "create it: systemd-tmpfiles --create dgx-music.conf, "
        f"or mkdir -p {spool}/{{{','.join(SPOOL_SUBDIRS)}}} "
        "owned by the dgx-music user"
    )
    if not spool.exists():
        return fail("spool", f"{spool} does not exist", mkfix)
    if not spool.is_dir():
        return fail("spool", f"{spool} is not a directory", "point spool: at a directory")
    problems: list[str] = []
    missing = [d for d in SPOOL_SUBDIRS if not (spool / d).is_dir()]
    devices = {}
    for name in SPOOL_SUBDIRS:
        sub = spool / name
        if not sub.is_dir():
            continue
        devices[name] = sub.stat().st_dev
        err = _writable(sub)
        if err is not None:
            problems.append(f"{name}/ not writable by {user} ({err})")
    if len(set(devices.values())) > 1:
        groups = ", ".join(f"{k}/ on dev {v}" for k, v in devices.items())
        return fail(
            "spool",
            f"{spool}: subdirectories on different filesystems ({groups}): renames would not be atomic",
            "keep inbox/ work/ outbox/ failed/ on one filesystem (no separate mounts below the spool)",
        )
    if problems:
        return fail(
            "spool",
            f"{spool}: " + "; ".join(problems),
            f"run doctor as the daemon's user, or chown -R dgx-music {spool} "
            "(submitters need group write on inbox/)",
        )
    free = shutil.disk_usage(spool).free
    if missing:
        return warn(
            "spool",
            f"{spool}: missing {', '.join(d + '/' for d in missing)} (the daemon creates them at start)",
            mkfix,
        )
    if free < LOW_DISK_FREE_BYTES:
        return warn(
            "spool", f"{spool}: only {_gib(free)} free", "free disk space: a 300 s FLOAT WAV is about 77 MB"
        )
    return ok(
        "spool",
        f"{spool}: {', '.join(d + '/' for d in SPOOL_SUBDIRS)} writable by {user}, "
        f"one filesystem, {_gib(free)} free",
    )


def check_decode_setup(settings: Settings) -> Check:
    """How each serving daemon's resident model decodes (decided at its load; a failed capture or
    compile shows)."""
    from daemon.core.messages import setup_summary
    from daemon.ops.client import serving_daemons

    lines = []
    for q in serving_daemons(settings):
        model = q.get("model") or {}
        if model.get("setup"):
            lines.append(
                f"{q.get('host')} pid {q.get('pid')}: {model.get('name')} {setup_summary(model['setup'])}"
            )
    if not lines:
        return ok("decode setup", "no serving daemon has a model loaded (each load decides its decode setup)")
    if any("capture failed" in line for line in lines):
        return warn(
            "decode setup",
            "\n".join(lines),
            "CUDA graph capture failed (decoding runs uncaptured, slower): see the daemon's journal",
        )
    if any("compile failed" in line for line in lines):
        return warn(
            "decode setup",
            "\n".join(lines),
            "torch.compile failed (the DiT runs eager, slower): see the daemon's journal, or set "
            "`compile: off` to skip the attempt",
        )
    return ok("decode setup", "\n".join(lines))
