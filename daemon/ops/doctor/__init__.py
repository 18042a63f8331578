"""`dgx-music doctor`: can this machine run the daemon, and if not, what to do about it.

The GPU validation (torch and CUDA versions, device name and compute
capability, memory, bf16, a tensor check) plus the things that stop a fresh install:
the config, the spool, the model files. Each check is ok, warn (works, but not as
intended: e.g. CPU fallback) or fail (the daemon will not run), and every non-ok check
says how to fix it. One module per area; runner.py puts them in order and prints the report.
"""

from __future__ import annotations

from daemon.ops.doctor.checks import Check, Status, fail, ok, warn
from daemon.ops.doctor.model_checks import check_model, safetensors_problem
from daemon.ops.doctor.platform_checks import (
    check_cuda,
    check_device,
    check_gpu,
    check_host_memory,
    check_python,
    check_torch,
)
from daemon.ops.doctor.requirements import requirement
from daemon.ops.doctor.runner import doctor, exit_code, format_json, format_table, run_checks
from daemon.ops.doctor.spool_checks import SPOOL_SUBDIRS, check_config, check_spool
from daemon.ops.doctor.systemd_checks import check_systemd

__all__ = [
    "Check",
    "Status",
    "ok",
    "warn",
    "fail",
    "check_python",
    "check_torch",
    "check_cuda",
    "check_gpu",
    "check_host_memory",
    "check_device",
    "check_config",
    "check_spool",
    "check_model",
    "safetensors_problem",
    "check_systemd",
    "run_checks",
    "exit_code",
    "format_table",
    "format_json",
    "doctor",
    "requirement",
    "SPOOL_SUBDIRS",
]
