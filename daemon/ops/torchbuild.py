"""Which build of torch a machine can use: the one rule that `systemd/install.sh --torch auto` and
`dgx-music doctor` both apply.

The rule, from the CUDA version the NVIDIA driver supports (the "CUDA Version" in `nvidia-smi`'s
header, which is the newest CUDA runtime the driver runs, not an installed toolkit):

- no driver (no `nvidia-smi`, or it fails)  -> cpu    (no CUDA libraries are downloaded)
- driver CUDA >= 13.0                       -> cu130  (also the aarch64 build for DGX Spark / GB10)
- driver CUDA >= 12.8                       -> cu128
- older                                     -> none: update the driver (or choose cpu)

Each build comes from PyTorch's own index, https://download.pytorch.org/whl/<build>.

This file is also run as a script by install.sh before any venv exists, so it imports only the
standard library: `python3 torchbuild.py` prints `<build>\\t<why>` (exit 3: the driver is too old).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

INDEX = "https://download.pytorch.org/whl"
BUILDS = ("cpu", "cu128", "cu130")
# Newest first: the first build whose CUDA the driver runs is chosen.
_CUDA_BUILDS = (((13, 0), "cu130"), ((12, 8), "cu128"))

_CUDA_RE = re.compile(r"CUDA Version:\s*(\d+)\.(\d+)")


@dataclass(frozen=True)
class TorchBuild:
    """A torch build (`cpu`, `cu128`, `cu130`, or None when none fits) and why it was chosen."""

    build: str | None
    why: str

    @property
    def index_url(self) -> str | None:
        return f"{INDEX}/{self.build}" if self.build else None


def driver_cuda(smi_output: str | None) -> tuple[int, int] | None:
    """The CUDA version in `nvidia-smi`'s header, or None."""
    if not smi_output:
        return None
    m = _CUDA_RE.search(smi_output)
    return (int(m.group(1)), int(m.group(2))) if m else None


def read_nvidia_smi(timeout: float = 20.0) -> str | None:
    """`nvidia-smi`'s output, or None without a working driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def choose(smi_output: str | None) -> TorchBuild:
    """The rule of this module's docstring, applied to `nvidia-smi`'s output (None: no driver)."""
    if smi_output is None:
        return TorchBuild("cpu", "no NVIDIA driver (nvidia-smi absent or failing): the CPU build")
    cuda = driver_cuda(smi_output)
    if cuda is None:
        return TorchBuild("cpu", "nvidia-smi reports no CUDA version: the CPU build")
    seen = f"{cuda[0]}.{cuda[1]}"
    for minimum, build in _CUDA_BUILDS:
        if cuda >= minimum:
            return TorchBuild(
                build, f"the driver supports CUDA {seen} (nvidia-smi), >= {minimum[0]}.{minimum[1]}: {build}"
            )
    return TorchBuild(
        None,
        f"the driver supports only CUDA {seen} (nvidia-smi); torch's CUDA builds need 12.8 or newer: "
        "update the NVIDIA driver, or install the CPU build (--torch cpu)",
    )


def main() -> int:
    chosen = choose(read_nvidia_smi())
    print(f"{chosen.build or 'none'}\t{chosen.why}")
    return 0 if chosen.build else 3


if __name__ == "__main__":
    sys.exit(main())
