"""The `host` block of a sidecar: machine and software versions, computed once per process."""

from __future__ import annotations

import functools
import socket
from importlib.metadata import PackageNotFoundError, version

from daemon import __version__
from jobspec.sidecar import HostInfo


def _dist_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=8)
def host_info(device: str) -> HostInfo:
    """Versions and the GPU that `device` names (None on CPU)."""
    gpu: str | None = None
    if device.startswith("cuda"):
        import torch

        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        gpu = torch.cuda.get_device_name(index)
    return HostInfo(
        hostname=socket.gethostname(),
        gpu=gpu,
        torch=_dist_version("torch"),
        transformers=_dist_version("transformers"),
        dgx_music=__version__,
    )
