"""The error types and exit codes are one list each, matching what the sidecars and units say."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from daemon.core.errors import ErrorType, ExitCode
from jobspec import sidecar

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"


def test_error_types_are_the_sidecar_schema_values() -> None:
    assert [str(t) for t in ErrorType] == list(get_args(sidecar.ErrorType))
    assert f"{ErrorType.OUT_OF_MEMORY}" == "out_of_memory"  # as written into messages and sidecars


def test_exit_codes_and_the_units_agree() -> None:
    assert (ExitCode.OK, ExitCode.JOB_FAILED, ExitCode.USAGE, ExitCode.UNAVAILABLE, ExitCode.CONFIG) == (
        0,
        1,
        2,
        69,
        78,
    )
    for unit in ("dgx-music.service", "dgx-music@.service"):
        text = (SYSTEMD / unit).read_text()
        prevented = re.findall(r"^RestartPreventExitStatus=(.*)$", text, re.M)
        assert prevented == [str(int(ExitCode.CONFIG))], (unit, prevented)  # 69 is retried on purpose
