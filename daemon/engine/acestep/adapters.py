"""LoRA adapters of a resident ACE-Step pipeline: the ones its model lists in the config, loaded
the first time a job names one (diffusers' `AceStepLoraLoaderMixin`, through peft) and switched
between calls: a batch runs with one adapter state (none, or one adapter at one scale), set
before its first denoising step on the thread that decodes, so a running call never sees it change.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from daemon.core.config import AdapterSpec
from daemon.core.errors import InvalidJobError, ModelLoadError
from daemon.core.messages import GenerationRequest

log = logging.getLogger(__name__)


def _weights_file(path: Path) -> Path:
    """The adapter's .safetensors file: `path` itself, or the one file of that kind in it."""
    if path.is_file():
        return path
    found = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if len(found) != 1:
        raise ModelLoadError(
            f"adapter {path}: expected one .safetensors file, found {len(found)}",
            hint="point `path:` at the adapter's .safetensors file",
        )
    return found[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Adapters:
    """The adapters of model `model` (its config's `adapters:`) on `pipe`."""

    def __init__(self, model: str, pipe: Any, specs: dict[str, AdapterSpec]) -> None:
        self.model, self.pipe, self.specs = model, pipe, specs
        self.loaded: dict[str, dict[str, Any]] = {}  # name -> its record (source, sha256 or revision)
        self.active: tuple[str, float] | None = None

    def wanted(self, req: GenerationRequest) -> tuple[str, float] | None:
        """(name, scale) of the adapter `req` names; InvalidJobError naming what can."""
        name = getattr(req, "adapter", None)
        if name is None:
            if getattr(req, "adapter_scale", None) is not None:
                raise InvalidJobError(
                    "`adapter_scale` without `adapter`",
                    loc="adapter_scale",
                    hint="name an adapter, or remove it",
                )
            return None
        spec = self.specs.get(name)
        if spec is None:
            listed = ", ".join(sorted(self.specs))
            raise InvalidJobError(
                f"model {self.model!r} lists no adapter {name!r}"
                + ("" if listed else " (it lists no adapters at all)"),
                loc="adapter",
                hint=f"name one of its adapters: {listed}"
                if listed
                else f"add it under `models: {self.model}: adapters:` in the daemon's config",
            )
        scale = req.adapter_scale if req.adapter_scale is not None else spec.scale
        return name, float(scale)

    def record(self, req: GenerationRequest) -> dict[str, Any] | None:
        want = self.wanted(req)
        if want is None:
            return None
        return {**self._load(want[0]), "name": want[0], "scale": want[1]}

    def _load(self, name: str) -> dict[str, Any]:
        if name in self.loaded:
            return self.loaded[name]
        spec = self.specs[name]
        try:
            if spec.path is not None:
                weights = _weights_file(Path(spec.path).expanduser())
                self.pipe.load_lora_weights(str(weights.parent), weight_name=weights.name, adapter_name=name)
                record: dict[str, Any] = {"source": str(spec.path), "sha256": _sha256(weights)}
            else:
                self.pipe.load_lora_weights(str(spec.id), revision=spec.revision, adapter_name=name)
                record = {"source": str(spec.id), "revision": spec.revision}
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"model {self.model!r}: cannot load adapter {name!r}: {type(exc).__name__}: {exc}",
                hint="check the adapter's path or hub id; it must be a LoRA of this model's DiT",
            ) from exc
        log.info("adapter %s of model %s loaded from %s", name, self.model, record["source"])
        self.loaded[name] = record
        return record

    def use(self, state: tuple[str, float] | None) -> None:
        """Set the adapter state of the next call (none, or one adapter at its scale)."""
        if state == self.active:
            return
        if state is None:
            self.pipe.disable_lora()
        else:
            self._load(state[0])
            self.pipe.enable_lora()
            self.pipe.set_adapters([state[0]], [state[1]])
        self.active = state
