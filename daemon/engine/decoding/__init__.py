"""Audio-token decoding: `get_backend(name)` builds the decode loop the `decoder` setting names.

The interface and its values are in `api` (imported by every implementation); `hf` holds
transformers' `generate` (the reference), `dgx` our own loop (with `step`, `graphs` and `sampler`
under it); `codec` turns codes into audio.
"""

from __future__ import annotations

from daemon.engine.decoding.api import DecodeBackend


def get_backend(name: str, *, batch_invariant: str = "auto", kernels: str = "auto") -> DecodeBackend:
    """transformers' generate for "transformers", else (auto, dgx) our loop, its fixed decode shapes
    turned on or off by `batch_invariant` and its step's kernels picked by `kernels`."""
    if name == "transformers":
        from daemon.engine.decoding.hf import TransformersBackend

        return TransformersBackend()
    from daemon.engine.decoding.dgx import DgxBackend

    return DgxBackend(batch_invariant=batch_invariant, kernels=kernels)
