"""The one place MusicGen's decode setup is decided: which loop, checked how, captured or not, at
which fixed row count, on which kernels.

`choose_setup` runs once per load (and again after a configuration reload, since a reload
reloads the model) and returns the loop with the immutable `DecodeSetup` that describes it. The
melody route and the load check's fallback are its decisions: a melody checkpoint prepends its
conditioning to the sequence, which only transformers' `generate` implements; under `decoder:
auto` the dgx loop is used only when a two-frame greedy decode matches `generate` on the loaded
model (`decoding.probe`). A capture that fails later stays visible (`current_setup`).
"""

from __future__ import annotations

import logging
from typing import Any

from daemon.core.config import Settings
from daemon.core.families import MUSICGEN
from daemon.core.messages import DecodeSetup
from daemon.engine.checkpoints import LoadedCheckpoint
from daemon.engine.decoding import get_backend
from daemon.engine.decoding.api import DecodeBackend
from daemon.engine.decoding.dgx import TEXT_TOKENS

log = logging.getLogger(__name__)

FAMILY = MUSICGEN
MELODY_ROUTE = "melody checkpoints decode with transformers generate (their conditioning is prepended)"


def choose_setup(
    settings: Settings, ckpt: LoadedCheckpoint, loop: DecodeBackend | None = None
) -> tuple[DecodeBackend, DecodeSetup]:
    """The loop `ckpt` decodes with and its setup; `loop` replaces the configured one (fault
    injection, tests), the melody route aside."""
    from daemon.engine.decoding.hf import TransformersBackend

    if ckpt.melody:
        backend = loop if loop is not None and loop.name == "transformers" else TransformersBackend()
        fallback = None if settings.decoder == "transformers" else MELODY_ROUTE
        return backend, describe(backend, ckpt.model, fallback=fallback)
    if loop is not None:
        return loop, describe(loop, ckpt.model)
    s = settings
    backend = get_backend(s.decoder, batch_invariant=s.batch_invariant, kernels=s.kernels)
    if settings.decoder != "auto" or backend.name != "dgx":
        return backend, describe(backend, ckpt.model)
    import transformers

    from daemon.engine.decoding.probe import dgx_problem

    problem = dgx_problem(backend, TransformersBackend(), ckpt.model, ckpt.processor)
    if problem is None:
        return backend, describe(backend, ckpt.model, load_check="the dgx loop matches transformers generate")
    log.warning(
        "the dgx decode loop cannot run on this model with transformers %s (%s): using transformers "
        "generate instead (slower); set `decoder: transformers` to silence this, or install a "
        "transformers version pyproject.toml allows",
        transformers.__version__,
        problem,
    )
    fallback = TransformersBackend()
    return fallback, describe(
        fallback, ckpt.model, fallback=f"the dgx loop failed its load check: {problem}", load_check=problem
    )


def describe(
    backend: DecodeBackend, model: Any, *, fallback: str | None = None, load_check: str | None = None
) -> DecodeSetup:
    """The setup `backend` runs `model` with (the dgx loop's choices; none for generate)."""
    uses_graphs = getattr(backend, "uses_graphs", None)
    if uses_graphs is None:
        return DecodeSetup(FAMILY, backend.name, fallback=fallback, load_check=load_check)
    invariant = bool(backend.invariant(model))  # type: ignore[attr-defined]
    setup = DecodeSetup(
        FAMILY,
        backend.name,
        capture="on" if uses_graphs(model) else "off",
        rows=backend.fixed_rows if invariant else None,  # type: ignore[attr-defined]
        kernels=backend.kernels_for(model),  # type: ignore[attr-defined]
        batch_invariant=invariant,
        fallback=fallback,
        load_check=load_check,
    )
    return current_setup(setup, backend)


def reproducibility(setup: DecodeSetup, backend: DecodeBackend, model: Any) -> dict[str, Any]:
    """What makes the tokens of `model` under `setup` repeatable (the sidecar's `reproducibility`)."""
    if setup.decoder == "transformers":
        basis = "transformers generate: one random stream per call, so only rows of one job share a call, "
        basis += "and its tokens also depend on how its rows were split (count, max_batch)"
        return _facts("same_job_only", False, basis)
    if setup.capture is None:  # another loop (tests)
        return _facts("may_differ", False, f"the {setup.decoder} decoder makes no promise")
    kernels = f"; the step runs on the {setup.kernels} kernels"
    if setup.batch_invariant:
        rows = f"{setup.rows} row{'' if setup.rows == 1 else 's'}"
        basis = f"fixed decode shapes: {rows} per call, each row's text padded to a multiple of "
        return _facts("independent", True, basis + f"{TEXT_TOKENS} tokens of its own length{kernels}")
    if next(model.decoder.parameters()).device.type == "cpu" and not backend.keeps_buckets(model):  # type: ignore[attr-defined]
        basis = "CPU decode: each row's text at its own length, the rows at the batch's count, which the "
        basis += "CPU kernels do not depend on (tested); batch_invariant: on makes it so by construction"
        return _facts("independent", False, basis + kernels)
    basis = "batch_invariant is off: the padded batch and text length follow the batch, and "
    return _facts("may_differ", False, basis + f"reduced-precision kernels change with them{kernels}")


def _facts(batch_mates: str, by_construction: bool, basis: str) -> dict[str, Any]:
    return {"batch_mates": batch_mates, "by_construction": by_construction, "basis": basis}


def current_setup(setup: DecodeSetup, backend: DecodeBackend) -> DecodeSetup:
    """`setup`, marked when a capture has failed since (decoding then runs uncaptured)."""
    error = getattr(backend, "capture_error", None)
    if isinstance(error, str) and setup.capture == "on":
        return setup.with_capture_failed(error)
    return setup
