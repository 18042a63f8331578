"""systemd integration: systemd-python gives journal fields and sd_notify through libsystemd."""

from __future__ import annotations

from daemon.ops.doctor.checks import Check, ok, warn


def check_systemd() -> Check:
    try:
        from systemd import daemon as _d  # noqa: F401
        from systemd import journal as _j  # noqa: F401
    except ImportError:
        return warn(
            "systemd-python",
            "not importable: sd_notify works through the built-in fallback, but logs reach the journal "
            "without the DGX_MUSIC_JOB_ID/_MODEL/_STAGE fields",
            "apt install python3-systemd (or pip install systemd-python, which needs libsystemd-dev)",
        )
    return ok("systemd-python", "importable: journal fields and sd_notify via libsystemd")
