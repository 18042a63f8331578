"""The one seam for what the decode path does only in tests, `bench --ops` or where there is no GPU.

* `interpret_triton_without_gpu()`: with no GPU the Triton kernels run in Triton's interpreter.
  Triton decides as it is imported, so the kernels module, `bench --ops` and the test suite's
  conftest call this before anything imports Triton (transformers' MusicGen does too).
* `launch_observers`: told of each Triton launch (`daemon.ops.opcount` counts them as kernels).
* `run_steps(backend, how)`: the dgx loop's steps `UNCAPTURED` even on CUDA (the reference for the
  captured graphs), or `GRAPH_SHAPED`: the graph path's buckets and chunked steps uncaptured.
* `decode_with(engine, loop)`: an engine decoding with another loop (fault injection, tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import torch

# Called as `observer(kernel_name)` around each Triton launch; the context manager returned is held
# open while the kernel runs (so a counter can ignore the tensor bookkeeping the interpreter does).
launch_observers: list[Callable[[str], AbstractContextManager[Any]]] = []

UNCAPTURED = "uncaptured"
GRAPH_SHAPED = "graph-shaped"

Backend = TypeVar("Backend")


def interpret_triton_without_gpu() -> bool:
    """Where there is no GPU, have Triton interpret its kernels; True when it will."""
    if torch.cuda.is_available():
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True


def run_steps(backend: Backend, how: str) -> Backend:
    """`backend` (a `dgx.DgxBackend`) running its steps `UNCAPTURED` or `GRAPH_SHAPED`."""
    if how not in (UNCAPTURED, GRAPH_SHAPED):
        raise ValueError(f"steps run {UNCAPTURED} or {GRAPH_SHAPED}, not {how!r}")
    backend.test_steps = how  # type: ignore[attr-defined]
    return backend


def decode_with(engine: Any, loop: Any) -> None:
    """`engine` (a `MusicEngine`) decodes with `loop` from its next call on; None: the configured one."""
    engine._loop = loop
