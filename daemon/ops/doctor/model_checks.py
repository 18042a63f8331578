"""Model checks: the same "can this model be loaded here, now" that `serve` asks before loading
(daemon.engine.loadable), so a model doctor passes is one serve loads, and one it fails makes
serve exit 69."""

from __future__ import annotations

from pathlib import Path

from daemon.core.config import ModelSpec
from daemon.core.families import ACE_STEP, spec_family
from daemon.engine.loadable import cached_snapshot, loadability, safetensors_problem
from daemon.ops.doctor.checks import Check, fail, ok, warn

__all__ = ["check_model", "safetensors_problem"]


def check_model(name: str, spec: ModelSpec) -> Check:
    label = f"model {name}"
    verdict = loadability(name, spec)
    if not verdict.ok:
        return fail(label, verdict.detail, verdict.hint)
    if verdict.downloads:
        return warn(label, verdict.detail, verdict.hint)
    if spec_family(spec) == ACE_STEP:
        directory = Path(spec.path).expanduser() if spec.path is not None else cached_snapshot(spec)
        assert directory is not None  # loadable and not to be downloaded: it is here
        return _acestep_ok(label, verdict.detail, directory, spec)
    return ok(label, verdict.detail)


def _acestep_ok(label: str, where: str, directory: Path, spec: ModelSpec) -> Check:
    from daemon.engine.acestep.layout import components
    from daemon.engine.hub import card_license

    parts = ", ".join(f"{k}: {v}" for k, v in sorted(components(directory).items()))
    licence = spec.license or card_license(directory) or "unknown"
    return ok(label, f"{where}; licence {licence}; components {parts}")
