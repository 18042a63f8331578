"""One way to write an ETA, wherever one is shown: `submit --wait`, `status`, the systemd
STATUS= line (`eta 24s`, `eta 3min`, `eta 1.5h`)."""

from __future__ import annotations


def format_eta(eta_s: float | None) -> str:
    """`eta 24s` below 90 s, `eta 3min` below 90 min, `eta 1.5h` beyond; '' when unknown."""
    if eta_s is None:
        return ""
    eta_s = max(0.0, eta_s)
    if eta_s < 90:
        return f"eta {eta_s:.0f}s"
    if eta_s < 5400:
        return f"eta {eta_s / 60:.0f}min"
    return f"eta {eta_s / 3600:.1f}h"
