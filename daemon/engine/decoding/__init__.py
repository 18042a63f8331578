"""Audio-token decoding: `get_backend(name)` chooses the decode loop for the `decoder` setting.

This module only chooses. The interface and its values are in `api` (imported by every
implementation); `hf` holds transformers' `generate` (the reference), `dgx` our own loop (with
`step`, `graphs` and `sampler` under it); `codec` turns codes into audio.
"""

from __future__ import annotations

import logging

from daemon.core.errors import GenerationError
from daemon.engine.decoding.api import DecodeBackend

log = logging.getLogger(__name__)


def get_backend(
    name: str, *, batch_invariant: str = "auto", max_batch: int = 8, kernels: str = "auto"
) -> DecodeBackend:
    """The decode loop for the `decoder` setting: auto (ours when available), dgx, transformers.

    `batch_invariant` and `max_batch` (the settings of those names) size the dgx loop's fixed
    decode shapes and `kernels` picks its step's kernels; transformers' generate has none.
    """
    from daemon.engine.decoding.hf import TransformersBackend

    if name == "transformers":
        return TransformersBackend()
    if name not in ("auto", "dgx"):
        raise ValueError(f"decoder must be auto, dgx or transformers, not {name!r}")
    try:
        from daemon.engine.decoding.dgx import DgxBackend
    except ImportError as exc:
        if name == "dgx":
            raise GenerationError(
                f"the dgx decode loop is not available: {exc}",
                hint="set `decoder: transformers` (or auto) in the config",
            ) from exc
        log.debug("dgx decode loop unavailable (%s); using transformers generate", exc)
        return TransformersBackend()
    return DgxBackend(batch_invariant=batch_invariant, max_rows=max_batch, kernels=kernels)
