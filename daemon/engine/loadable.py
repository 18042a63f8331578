"""Can this model be loaded here, now? One answer for `serve` (which refuses to start, exit 69, on
a no) and `dgx-music doctor` (which fails on the same no), so doctor's verdict predicts serve's.

Without loading anything it checks what loading needs: a local checkpoint directory, or the hub
snapshot of the configured revision, with config, weights (every shard of an index), tokenizer
and processor files, readable, and every safetensors file whole (its header's extent matches the
file's size: a truncated copy fails). A hub model that is not cached can be loaded only where the
hub is allowed (HF_HUB_OFFLINE unset) and answers now; then it is downloaded at load.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from daemon.core.config import ModelSpec
from daemon.core.errors import ModelLoadError
from daemon.core.families import ACE_STEP, MUSICGEN, cached_snapshot, hf_cache_dir, spec_family
from daemon.engine.hub import hf_offline

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
MODEL_TYPES = ("musicgen", "musicgen_melody")
HUB_PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Loadability:
    """The answer: `ok`, what was found (`detail`), what to do about a no (`hint`), and whether
    loading will download the model first (`downloads`)."""

    ok: bool
    detail: str
    hint: str = ""
    downloads: bool = False

    def raise_unless_ok(self) -> None:
        if not self.ok:
            raise ModelLoadError(self.detail, hint=self.hint)


def loadability(name: str, spec: ModelSpec) -> Loadability:
    """Whether model `name` (configured as `spec`) can be loaded here, now; see the module doc."""
    family = spec_family(spec)
    if spec.path is not None:
        return local_checkpoint(name, Path(spec.path).expanduser(), family)
    return _hub(name, spec, family)


def fetch_hint(name: str) -> str:
    return (
        f"run `dgx-music model fetch {name}` on a machine with network access (same HF_HOME), "
        f"or copy the Hugging Face cache to {hf_cache_dir()}"
    )


def local_checkpoint(name: str, path: Path, family: str = MUSICGEN) -> Loadability:
    """loadability() of a checkpoint directory (a local model, or a hub snapshot)."""
    init_fix = (
        f"point models.{name}.path at a save_pretrained directory, "
        f"or make one: dgx-music model init-tiny {path}"
    )
    problem = directory_problem(path, family)
    if problem is None:
        return Loadability(True, f"local checkpoint {path}")
    what, damaged = problem
    hint = "the checkpoint is damaged or incomplete: copy or save it again" if damaged else init_fix
    if what.startswith("not readable"):
        hint = f"chmod a+r {path}/* (safetensors files are written 0600)"
    return Loadability(False, f"model {name!r}: {path}: {what}", hint)


def directory_problem(path: Path, family: str = MUSICGEN) -> tuple[str, bool] | None:
    """What keeps the checkpoint directory `path` from loading, and whether it is damage (a file
    missing or cut short) rather than the wrong place; None when it can be loaded."""
    if not path.is_dir():
        return ("no such directory", False)
    if family == ACE_STEP:
        return _pipeline_problem(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        return ("no config.json (not a checkpoint)", False)
    missing = []
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        missing.append("no weights (model.safetensors or pytorch_model.bin)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append("no tokenizer (tokenizer.json or spiece.model)")
    if not any((path / f).is_file() for f in PROCESSOR_FILES):
        missing.append("no preprocessor_config.json")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                missing.append(f"no readable {index_name}")
                continue
            missing.extend(f"no {s}" for s in shards if not (path / s).is_file())
    if missing:
        return (", ".join(missing), True)
    unreadable = [f.name for f in path.iterdir() if f.is_file() and not os.access(f, os.R_OK)]
    if unreadable:
        return (f"not readable by this user: {', '.join(sorted(unreadable))}", False)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return (f"config.json is unreadable or not valid JSON: {exc}", True)
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in MODEL_TYPES:
        return (
            f"a {kind!r} checkpoint, not a MusicGen one (model_type 'musicgen' or 'musicgen_melody')",
            False,
        )
    for weights in sorted(path.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            return (f"{weights.name}: {problem}", True)
    return None


def _pipeline_problem(path: Path) -> tuple[str, bool] | None:
    """directory_problem() of an ACE-Step pipeline folder: its own layout check, then every
    component's safetensors whole."""
    # Imported here: the ACE-Step checkpoint module imports the loader, which imports this one.
    from daemon.engine.acestep.layout import check_local_dir

    try:
        check_local_dir("", path)
    except ModelLoadError as exc:
        what = exc.message.split(": ", 1)[-1]
        return (what, "incomplete" in (exc.hint or "") or "damaged" in (exc.hint or ""))
    for weights in sorted(path.glob("*/*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            return (f"{weights.relative_to(path)}: {problem}", True)
    return None


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
                return "truncated or corrupt (header length past the end)"
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


def _hub(name: str, spec: ModelSpec, family: str) -> Loadability:
    where = f"{spec.id}@{spec.revision} in {hf_cache_dir()}"
    snapshot = cached_snapshot(spec)
    if snapshot is not None:
        problem = directory_problem(snapshot, family)
        if problem is None:
            return Loadability(True, f"{where}: cached ({snapshot.name[:12]})")
        what, _ = problem
        if not problem[1]:
            return Loadability(False, f"model {name!r}: {where}: {what}", fetch_hint(name))
        state = f"cached but incomplete ({what})"
        if ": truncated" in what or ": corrupt" in what or ": unreadable header" in what:
            # A file cut short stays cut short: huggingface_hub does not fetch a file it has.
            return Loadability(
                False,
                f"model {name!r}: {where}: {state}",
                f"remove {snapshot} and its blobs, then " + fetch_hint(name),
            )
    else:
        state = "not in the local cache"
    if hf_offline():
        return Loadability(
            False, f"model {name!r}: {where}: {state}, and HF_HUB_OFFLINE is set", fetch_hint(name)
        )
    unreachable = _hub_answers(spec)
    if unreachable is not None:
        return Loadability(
            False,
            f"model {name!r}: {where}: {state}, and it cannot be downloaded now ({unreachable})",
            fetch_hint(name),
        )
    return Loadability(
        True,
        f"{where}: {state}; it will be downloaded at load (the hub answers)",
        # The systemd unit has no network: there the download would fail.
        fetch_hint(name) + " before starting the service (the unit runs offline)",
        downloads=True,
    )


def _hub_answers(spec: ModelSpec) -> str | None:
    """None when the hub answers for this repo and revision, else why not."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/models/{spec.id}/revision/{spec.revision}"
    request = urllib.request.Request(url, method="HEAD")
    token = os.environ.get("HF_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return f"{url}: HTTP {exc.code}, gated or private: accept the licence and set HF_TOKEN"
        if exc.code == 404:
            return f"{url}: HTTP 404, no such repository or revision"
        return f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{endpoint}: {getattr(exc, 'reason', exc)}"
    return None
