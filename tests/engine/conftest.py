"""Engine tests run through both decode loops: the one that ships (dgx) and the reference."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["dgx", "transformers"])
def decoder(request: pytest.FixtureRequest) -> str:
    return str(request.param)
