"""Model checks: the same "can this model be loaded here, now" that `serve` asks before loading
(daemon.engine.loadable), so a model doctor passes is one serve loads, and one it fails makes
serve exit 69."""

from __future__ import annotations

from pathlib import Path

from daemon.core.config import ModelSpec
from daemon.core.families import ACE_STEP, spec_family
from daemon.engine.hub import hf_cache_dir as _hf_cache_dir
from daemon.engine.hub import hf_offline as _hf_offline
from daemon.engine.loadable import loadability, safetensors_problem
from daemon.ops.doctor.checks import Check, fail, ok, warn

__all__ = ["check_model", "safetensors_problem"]


def check_model(name: str, spec: ModelSpec) -> Check:
    label = f"model {name}"
    if spec_family(spec) == ACE_STEP:
        return _check_acestep_model(label, name, spec)
    verdict = loadability(name, spec)
    if not verdict.ok:
        return fail(label, verdict.detail, verdict.hint)
    if verdict.downloads:
        return warn(label, verdict.detail, verdict.hint)
    return ok(label, verdict.detail)


def _check_acestep_model(label: str, name: str, spec: ModelSpec) -> Check:
    """An ACE-Step pipeline folder: every component there and whole; its components and licence."""
    from daemon.core.errors import ModelLoadError
    from daemon.engine.acestep.checkpoint import check_local_dir

    if spec.path is None:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(
            str(spec.id), "model_index.json", cache_dir=_hf_cache_dir(), revision=spec.revision
        )
        where = f"ace-step {spec.id}@{spec.revision} in {_hf_cache_dir()}"
        fetch = f"run dgx-music model fetch {name} (on a machine with network access to huggingface.co)"
        if isinstance(hit, str):
            return _acestep_ok(label, where, Path(hit).parent, spec)
        if _hf_offline():
            return fail(label, f"{where}: not in the cache, and HF_HUB_OFFLINE is set", fetch)
        return warn(
            label, f"{where}: not in the cache; it will be downloaded at first load", fetch + " to do it now"
        )
    path = Path(spec.path).expanduser()
    try:
        check_local_dir(name, path)
    except ModelLoadError as exc:
        return fail(label, exc.message, exc.hint or f"dgx-music model init-tiny {path} --family ace-step")
    for weights in sorted(path.glob("*/*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            return fail(label, f"{weights}: {problem}", "the checkpoint is damaged: copy or save it again")
    return _acestep_ok(label, f"ace-step checkpoint {path}", path, spec)


def _acestep_ok(label: str, where: str, directory: Path, spec: ModelSpec) -> Check:
    from daemon.engine.acestep.checkpoint import card_license, components

    parts = ", ".join(f"{k}: {v}" for k, v in sorted(components(directory).items()))
    licence = spec.license or card_license(directory) or "unknown"
    return ok(label, f"{where}; licence {licence}; components {parts}")
