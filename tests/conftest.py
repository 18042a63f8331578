"""Shared fixtures: a tiny random MusicGen checkpoint (built once per session) and settings that use it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.core.config import Settings, load_settings

# `make test` runs the suite on several pytest-xdist workers, more of them than cores (many tests
# wait on a daemon). Each worker, and each daemon or CLI child it starts, gets one intra-op
# thread: torch's threads spin-wait for each other, and on oversubscribed cores that makes every
# step many times slower. Set before anything imports torch (below, the CUDA probe).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_threads, "1")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# Without a GPU the fused step's Triton kernels run in Triton's interpreter, which has to be chosen
# before anything imports Triton (transformers' MusicGen does).
if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# Skips CI accepts. With CI_STRICT_SKIPS=1 (set by .ci/run) a test skipped for any other
# reason fails the run: a missing tool, service or permission must not turn CI green by skipping
# what it checks. Keep this list short (the README, "Start here", says why each entry is there).
ALLOWED_SKIPS = (
    "needs CUDA",  # the gpu-marked tests: CI has no GPU (benchmarks/gpu_check.py runs them on one)
    "needs the installed wheel",  # run by scripts/check-installed.sh, the second half of `make test`
    "needs a CPU with",  # an instruction set the machine lacks (oneDNN's bfloat16 packing: AVX512)
)
STRICT_SKIPS_ENV = "CI_STRICT_SKIPS"


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(STRICT_SKIPS_ENV) != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    bad = [(r.nodeid, _skip_reason(r)) for r in skipped if not _skip_reason(r).startswith(ALLOWED_SKIPS)]
    if not bad:
        return
    lines = [f"{STRICT_SKIPS_ENV}=1: {len(bad)} test(s) skipped for a reason outside the allow-list:"]
    lines += [f"  {nodeid}: {reason}" for nodeid, reason in bad]
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line("\n".join(lines), red=True, bold=True)
    else:
        print("\n".join(lines))
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests skip cleanly on machines without CUDA. Under pytest-xdist the `slow` tests are
    handed out first, so that the short ones fill the workers around them rather than one long
    test running on alone at the end."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: order kept
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Test folders whose sidecars under tmp_path are held to the committed contract after every test
# (besides those in the spool of any daemon a test started through tests/daemon_harness.py).
SIDECAR_CONTRACT_FOLDERS = {"e2e", "reliability", "cluster", "service"}


@pytest.fixture(autouse=True)
def _sidecars_follow_the_committed_schema(request: pytest.FixtureRequest) -> Any:
    """Every sidecar a daemon wrote validates against jobspec/examples/result.schema.json
    (tests/sidecar_contract.py): in the spools of the daemons the test started, and under the
    tmp_path of the end-to-end, reliability, cluster and service tests."""
    from daemon_harness import STARTED_SPOOLS

    STARTED_SPOOLS.clear()
    yield
    roots = [p for p in STARTED_SPOOLS if p.is_dir()]
    STARTED_SPOOLS.clear()
    tmp = (getattr(request.node, "funcargs", None) or {}).get("tmp_path")
    if tmp is not None and request.node.path.parent.name in SIDECAR_CONTRACT_FOLDERS:
        roots.append(Path(tmp))
    if roots:
        from tests.sidecar_contract import check_sidecars

        for root in roots:
            check_sidecars(root)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mono MusicGen checkpoint (32 kHz, 40 frames/s, 4 codebooks), saved like a hub one."""
    import torch

    from daemon.ops.tinymodel import init_tiny

    # A tiny model gains nothing from intra-op threads, and on a shared 2-core box their
    # spin-waiting makes every step many times slower.
    torch.set_num_threads(1)

    return init_tiny(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture(scope="session")
def tiny_stereo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny stereo MusicGen checkpoint (8 codebooks interleaved left/right, as musicgen-stereo)."""
    from daemon.ops.tinymodel import init_tiny

    return init_tiny(tmp_path_factory.mktemp("tiny-stereo") / "tiny-stereo", stereo=True)


@pytest.fixture(scope="session")
def tiny_melody_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny musicgen-melody checkpoint (model_type musicgen_melody, chroma conditioning)."""
    from daemon.ops.tinymodel import init_tiny

    return init_tiny(tmp_path_factory.mktemp("tiny-melody") / "tiny-melody", melody=True)


@pytest.fixture(scope="session")
def tiny_acestep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ACE-Step 1.5 turbo pipeline (48 kHz stereo, 31.25 latent frames/s), MIT model card."""
    import torch

    from daemon.ops.tinyacestep import init_tiny

    torch.set_num_threads(1)
    return init_tiny(tmp_path_factory.mktemp("tiny-acestep") / "tiny-song")


@pytest.fixture
def make_settings(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., Settings]:
    """Settings for the tiny model on CPU with the spool under tmp_path; keyword overrides win."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "spool": tmp_path / "spool",
            "models": {"tiny": {"path": str(tiny_model_dir)}},
            "default_model": "tiny",
            "device": "cpu",
            # Tests assert exact float32 results; dtype auto (bf16 on CPUs that have it) has its own tests.
            "dtype": "float32",
            "warmup": False,
        }
        values.update(overrides)
        return load_settings(None, **values)

    return make


@pytest.fixture
def tiny_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()
