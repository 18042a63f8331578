"""The `slurm` fixture: a real single-node Slurm cluster (munged, slurmctld, slurmd) under tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.slurm import SlurmCluster, slurm_unavailable


@pytest.fixture
def slurm(tmp_path: Path) -> Iterator[SlurmCluster]:
    reason = slurm_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with SlurmCluster(tmp_path / "slurm", gpus=2) as cluster:
        yield cluster
