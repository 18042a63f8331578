"""Fault injection for the test harness: the only place the daemon can be told to misbehave.

The reliability and systemd tests need a daemon that stalls mid-decode, runs out of memory once,
or dies like a segfaulting kernel. None of that belongs in the production configuration: the
faults come from one environment variable, `DGXMUSIC_TEST_FAULTS` (JSON), which the service
ignores under systemd (`INVOCATION_ID` set) and announces loudly everywhere else. They are
applied by wrapping the engine and its decode backend, so neither has a test branch.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.engine.decoding import get_backend
from daemon.engine.decoding.api import DecodeBackend, DecodeRequest
from daemon.engine.decoding.testseam import decode_with
from daemon.outbox import publish
from jobspec import Job

log = logging.getLogger(__name__)

ENV_VAR = "DGXMUSIC_TEST_FAULTS"


class Faults(BaseModel):
    """What to break. Every field off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    oom_once: bool = Field(default=False, description="the first decode of more than one row raises CUDA OOM")
    stall_after_steps: int | None = Field(default=None, ge=0, description="sleep once after this many steps")
    stall_s: float = Field(default=0.0, ge=0, description="how long the stall lasts (a cancel ends it)")
    kill_on_prompt: str | None = Field(
        default=None, description="SIGKILL the daemon on a job whose prompt has this"
    )
    kill_before_sidecar: str | None = Field(
        default=None,
        description="SIGKILL the daemon inside the publish step, after the audio files of a job whose "
        "prompt has this are in outbox/ and before its sidecar is written",
    )
    load_stall_s: float = Field(
        default=0.0,
        ge=0,
        description="sleep this long before each model load (a checkpoint that loads slowly)",
    )
    pretend_host: str | None = Field(
        default=None,
        description="report this host name and a boot id of its own: a daemon on another machine",
    )

    @property
    def any(self) -> bool:
        return self != Faults()


def faults_from_environment(environ: Mapping[str, str] | None = None) -> Faults | None:
    """The harness's faults, or None. Refused (with an error in the log) under systemd."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_VAR)
    if not raw:
        return None
    if env.get("INVOCATION_ID"):
        log.error("%s is set but this daemon runs under systemd: fault injection refused", ENV_VAR)
        return None
    try:
        faults = Faults.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise ValueError(f"{ENV_VAR} is not a valid fault description: {exc}") from exc
    log.warning(
        "FAULT INJECTION ACTIVE (%s): %s; this daemon will misbehave on purpose",
        ENV_VAR,
        faults.model_dump(exclude_defaults=True),
    )
    return faults


class _Shared:
    """State the two wrappers share: the running job's cancel event, whether OOM already fired."""

    def __init__(self) -> None:
        self.cancel: threading.Event | None = None
        self.oom_fired = False


class FaultyBackend:
    """A decode backend that stalls or runs out of memory as the faults say, then decodes."""

    def __init__(self, inner: DecodeBackend, faults: Faults, shared: _Shared) -> None:
        self.inner, self.faults, self._shared = inner, faults, shared
        self.name = inner.name

    def __getattr__(self, item: str) -> Any:  # reset, per_row_seeds, buckets ... of the real loop
        return getattr(self.inner, item)

    def decode(self, model: Any, req: DecodeRequest) -> torch.Tensor:
        f = self.faults
        if f.oom_once and len(req.rows) > 1 and not self._shared.oom_fired:
            self._shared.oom_fired = True
            raise torch.OutOfMemoryError("CUDA out of memory (injected: oom_once)")
        if f.stall_after_steps is not None and req.on_step is not None:
            req.on_step = self._stalling(req.on_step)
        return self.inner.decode(model, req)

    def _stalling(self, on_step: Any) -> Any:
        seen = [0]
        stalled = [False]

        def wrapped(step: int, total: int) -> None:
            seen[0] += 1
            if not stalled[0] and seen[0] >= int(self.faults.stall_after_steps or 0):
                stalled[0] = True
                # Tests wait for this line to act mid-stall (not for a guessed time).
                log.warning("fault injection: stalling %.1f s after step %d", self.faults.stall_s, seen[0])
                _sleep(self.faults.stall_s, self._shared.cancel)
            on_step(step, total)

        return wrapped


class FaultyEngine:
    """The engine with `kill_on_prompt` before each generation, and the stall made cancellable."""

    def __init__(self, inner: Any, faults: Faults, shared: _Shared) -> None:
        self.inner, self.faults, self._shared = inner, faults, shared

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def load_model(self, name: str | None = None, *args: Any, **kwargs: Any) -> Any:
        if self.faults.load_stall_s:
            log.warning("fault injection: the load of %s takes %.1f s longer", name, self.faults.load_stall_s)
            time.sleep(self.faults.load_stall_s)
        return self.inner.load_model(name, *args, **kwargs)

    def generate(self, requests: Any, **kwargs: Any) -> Any:
        marker = self.faults.kill_on_prompt
        reqs = requests if isinstance(requests, (list, tuple)) else [requests]
        if marker and any(marker in r.prompt for r in reqs):
            log.critical("fault injection: killing the daemon on a prompt containing %r", marker)
            os.kill(os.getpid(), signal.SIGKILL)
        self._shared.cancel = kwargs.get("cancel")
        return self.inner.generate(requests, **kwargs)


def apply_identity(faults: Faults | None) -> None:
    """`pretend_host`: claims and state files name another machine (peers judge it by heartbeat)."""
    if faults is not None and faults.pretend_host:
        from daemon.spool.owner import pretend_host

        pretend_host(faults.pretend_host)


def with_faults(engine: Any, faults: Faults | None) -> Any:
    """`engine` unchanged without faults; else wrapped, with its backend wrapped too (and the
    publish step's test seam set for `kill_before_sidecar`)."""
    if faults is None or not faults.any:
        return engine
    if faults.kill_before_sidecar:
        publish.before_sidecar_fault = _killer_before_sidecar(faults.kill_before_sidecar)
    shared = _Shared()
    s = engine.settings
    loop = get_backend(s.decoder, batch_invariant=s.batch_invariant, kernels=s.kernels)
    decode_with(engine, FaultyBackend(loop, faults, shared))
    return FaultyEngine(engine, faults, shared)


def _killer_before_sidecar(marker: str) -> Any:
    def kill(job: Job, sidecar: Path) -> None:
        if marker in (job.prompt or ""):
            log.critical("fault injection: killing the daemon before writing %s", sidecar.name)
            os.kill(os.getpid(), signal.SIGKILL)

    return kill


def _sleep(seconds: float, cancel: threading.Event | None) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if cancel is not None:
            if cancel.wait(min(left, 0.05)):
                return
        else:
            time.sleep(min(left, 0.05))


def without_faults(engine: Any) -> Any:
    """Undo `with_faults`: the plain engine with its real backend back in place."""
    if not isinstance(engine, FaultyEngine):
        return engine
    decode_with(engine.inner, None)
    return engine.inner
