"""The one seam for what the dgx loop does only in tests or where there is no GPU.

* `interpret_triton_without_gpu()`: with no GPU, the fused step's Triton kernels run in Triton's
  interpreter on CPU tensors (slow: for tests and `bench --ops`). Triton decides between compiling
  and interpreting as it is imported, so the environment switch has to come first: the kernels
  module calls this before it imports Triton, and so do `bench --ops` and the test suite's conftest
  (transformers' MusicGen imports Triton too).
* `launch_observers`: who is told of each Triton launch (`daemon.ops.opcount` counts them as kernels;
  a TorchDispatchMode cannot see a Triton launch).
* `UNCAPTURED_GRAPH_PATH`: the dgx loop's `mode` that runs the graph path's static buffers and chunked
  steps without capturing them, on any device, so the graph path's logic is tested without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

# Called as `observer(kernel_name)` around each Triton launch; the context manager returned is held
# open while the kernel runs (so a counter can ignore the tensor bookkeeping the interpreter does).
launch_observers: list[Callable[[str], AbstractContextManager[Any]]] = []

UNCAPTURED_GRAPH_PATH = "static"


def interpret_triton_without_gpu() -> bool:
    """Where there is no GPU, have Triton interpret its kernels; True when it will."""
    if torch.cuda.is_available():
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True
