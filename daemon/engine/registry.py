"""Which family loads a configured model: the registry of the engine's model families.

Apart from `daemon.engine.family` (the seam every family imports), so that the seam imports no
family and no family depends on itself through it.
"""

from __future__ import annotations

from daemon.core.config import Settings
from daemon.core.errors import ModelLoadError, UnknownModelError
from daemon.core.families import ACE_STEP, MUSICGEN, spec_family
from daemon.engine.family import ModelFamily


def _families() -> dict[str, ModelFamily]:
    # Imported here: a family pulls in its framework (transformers, diffusers) only when asked.
    from daemon.engine.acestep.model import AceStep
    from daemon.engine.musicgen import MusicGen

    return {MUSICGEN: MusicGen(), ACE_STEP: AceStep()}


def family_for(name: str, settings: Settings) -> ModelFamily:
    """The family that loads the configured model `name` (`daemon.core.families.spec_family`)."""
    spec = settings.models.get(name)
    if spec is None:
        raise UnknownModelError(
            f"model {name!r} is not configured", hint=f"use one of: {', '.join(sorted(settings.models))}"
        )
    wanted = spec_family(spec)
    family = _families().get(wanted)
    if family is None:
        raise ModelLoadError(
            f"model {name!r} is a {wanted} checkpoint, which this daemon cannot load yet",
            hint=f"configure a model of another family ({', '.join(_families())})",
        )
    return family
