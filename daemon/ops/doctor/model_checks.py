"""Model checks: a local checkpoint directory is complete and whole, a hub model is cached."""

from __future__ import annotations

import json
import os
from pathlib import Path

from daemon.core.config import ModelSpec
from daemon.core.families import ACE_STEP, spec_family
from daemon.engine.hub import hf_cache_dir as _hf_cache_dir
from daemon.engine.hub import hf_offline as _hf_offline
from daemon.ops.doctor.checks import Check, fail, ok, warn
from daemon.ops.doctor.checks import user_name as _user

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def check_model(name: str, spec: ModelSpec) -> Check:
    label = f"model {name}"
    if spec_family(spec) == ACE_STEP:
        return _check_acestep_model(label, name, spec)
    if spec.path is not None:
        return _check_local_model(label, spec.path)
    return _check_hub_model(label, name, spec)


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


def _check_local_model(label: str, path: Path) -> Check:
    init_fix = (
        "point models.<name>.path at a save_pretrained directory, "
        f"or make one: dgx-music model init-tiny {path}"
    )
    if not path.is_dir():
        return fail(label, f"{path}: no such directory", init_fix)
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer (tokenizer.json or spiece.model)")
    if not any((path / f).is_file() for f in PROCESSOR_FILES):
        missing.append("preprocessor_config.json")
    if missing:
        return fail(label, f"{path}: missing {', '.join(missing)}", init_fix)
    unreadable = [f.name for f in path.iterdir() if f.is_file() and not os.access(f, os.R_OK)]
    if unreadable:
        return fail(
            label,
            f"{path}: not readable by {_user()}: {', '.join(sorted(unreadable))}",
            f"chmod a+r {path}/* (safetensors files are written 0600)",
        )
    for weights in sorted(path.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            return fail(label, f"{weights}: {problem}", "the checkpoint is damaged: copy or save it again")
    return ok(label, f"local checkpoint {path}")


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be whole (truncated, corrupt header), or None.

    Reads only the header: 8 bytes of length, the JSON index, and checks that the tensors'
    data ends exactly at the end of the file, which is what a truncated copy breaks.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return "truncated (no header)"
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                return "corrupt header length"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:
        return f"unreadable header ({exc})"
    if not isinstance(header, dict):
        return "corrupt header"
    ends = [
        int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
    ]
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        return f"truncated or padded: header says {expected} bytes, file has {size}"
    return None


def _check_hub_model(label: str, name: str, spec: ModelSpec) -> Check:
    from huggingface_hub import try_to_load_from_cache

    repo, revision = str(spec.id), spec.revision
    cache = _hf_cache_dir()
    fetch = f"run dgx-music model fetch {name} (on a machine with network access to huggingface.co)"

    def cached(filename: str) -> Path | None:
        hit = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision)
        return Path(hit) if isinstance(hit, str) else None

    config = cached("config.json")
    weights = [f for f in WEIGHT_FILES if cached(f) is not None]
    shards_missing: list[str] = []
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = cached(index_name)
        if index is None:
            continue
        try:
            shard_names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError):
            shards_missing.append(index_name + " (unreadable)")
            continue
        shards_missing.extend(s for s in shard_names if cached(s) is None)
    where = f"{repo}@{revision} in {cache}"
    if config is not None and weights and not shards_missing:
        return ok(label, f"{where}: cached ({config.parent.name[:12]})")
    what = (
        "not in the cache"
        if config is None
        else "partly cached: missing " + (", ".join(shards_missing) if shards_missing else "weights")
    )
    if _hf_offline():
        return fail(label, f"{where}: {what}, and HF_HUB_OFFLINE is set", fetch)
    return warn(label, f"{where}: {what}; it will be downloaded at first load", fetch + " to do it now")
