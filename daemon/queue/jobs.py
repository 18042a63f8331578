"""The jobs in the queue stage: a claimed file's group of jobs, one queued job, and their outcomes.

A claimed file holds one job or a batch; its work file goes away only when the last of its jobs
has an outcome on disk, and which jobs are done is persisted so a crash in the middle of a batch
does not run the finished ones again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon import spool
from daemon.core.config import Settings
from daemon.core.fsio import atomic_write_bytes
from daemon.core.logctx import MESSAGE_ID_JOB_FAILED, message_id
from daemon.core.messages import Generated
from daemon.spool import state
from daemon.spool.library import ReferenceAudio
from jobspec import Job
from jobspec.edit import EDIT_KEYS

log = logging.getLogger(__name__)

# Errors of the filesystem that a later retry can get past (space freed, permissions fixed).
RETRYABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


@dataclass
class ClaimGroup:
    """The jobs of one claimed file (one, or several for a batch file). The work file goes away
    when the last of them has its outcome on disk; `done` is persisted so a crash in the middle
    of a batch does not run the finished jobs again."""

    claim: spool.Claimed
    job_ids: list[str]
    done: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def is_batch(self) -> bool:
        return len(self.job_ids) > 1


def done_path(settings: Settings, claim_id: str) -> Path:
    return settings.state_dir / "batches" / f"{claim_id}.json"


def load_done(settings: Settings, claim_id: str) -> set[str]:
    data = state.read_json(done_path(settings, claim_id))
    return set(data) if isinstance(data, list) else set()


@dataclass
class QueuedJob:
    group: ClaimGroup
    job: Job  # normalized, model resolved
    job_id: str  # reserved result id (`<id>-2` ... on collision)
    queued_at: float  # time.time() at pickup
    pending: Generated | None = None  # generated, waiting for the outbox to accept it
    started_at: float | None = None
    retries: int = 0
    not_before: float = 0.0  # monotonic time before which a retry must wait
    references: list[ReferenceAudio] = field(default_factory=list)  # as read for the run

    @property
    def conditioned(self) -> bool:
        """Sections or reference audio: decoded alone, never batched with other jobs."""
        job = self.job
        return (
            job.sections is not None
            or job.continue_from is not None
            or job.melody is not None
            or any(getattr(job, k) is not None for k in EDIT_KEYS)
        )

    @property
    def priority(self) -> str:
        return self.job.priority

    @property
    def claim(self) -> spool.Claimed:
        return self.group.claim


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in RETRYABLE_ERRNOS


class Outcomes:
    """Records how each job ended (failed/ or done) and counts them; shared by the worker and
    the publisher so that both threads count into one place."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.completed = 0
        self.failed = 0

    def fail(
        self,
        item: QueuedJob,
        error_type: str,
        message: str,
        *,
        hint: str | None,
        status: str = "failed",
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        try:
            fail_group_job(
                self.settings,
                item.group,
                item.job_id,
                item.job,
                error_type,
                message,
                hint=hint,
                status=status,
                details=details,
                started_at=item.started_at,
            )
        except OSError as exc:
            # Even the error sidecar cannot be written (full disk): keep the job in work/ rather
            # than lose it or kill the worker; the next start runs it again.
            log.error(
                "job %s: cannot record its %s outcome (%s); it stays in work/ for the next start",
                item.job_id,
                error_type,
                exc,
            )
            with contextlib.suppress(OSError):  # the meta write may fail the same way
                spool.mark_requeued(self.settings, item.claim)
            return
        self.failed += 1
        finish_group_job(self.settings, item.group, item.job_id, failed=True)

    def complete(self, item: QueuedJob, sidecar_path: Path) -> None:
        self.completed += 1
        state.record_outcome(
            self.settings,
            {
                "job_id": item.job_id,
                "status": "completed",
                "path": str(sidecar_path),
                "finished": time.time(),
            },
        )
        finish_group_job(self.settings, item.group, item.job_id)


def fail_group_job(
    settings: Settings,
    group: ClaimGroup,
    job_id: str,
    job: Job | None,
    error_type: str,
    message: str,
    *,
    hint: str | None,
    status: str = "failed",
    details: list[dict[str, Any]] | None = None,
    started_at: float | None = None,
) -> None:
    """Write failed/<id>.yaml (the original bytes) and <id>.error.json for one job of a group."""
    claim = group.claim
    body = spool.error_sidecar(
        job_id=job_id,
        source_file=claim.source_name,
        error_type=error_type,
        message=message,
        details=details,
        hint=hint,
        submitted_at=claim.submitted_at,
        started_at=started_at,
        finished_at=time.time(),
        attempts=claim.attempts,
        status=status,
        request=job.model_dump(mode="json") if job is not None else None,
    )
    # A batch keeps its work file until every job has an outcome: failed jobs get a copy.
    _job_file, err_path = spool.fail_job(settings, claim, body, job_id=job_id, keep_work=group.is_batch)
    log.warning(
        "job %s %s: %s: %s", job_id, status, error_type, message, extra=message_id(MESSAGE_ID_JOB_FAILED)
    )
    state.record_outcome(
        settings,
        {
            "job_id": job_id,
            "status": status,
            "error": error_type,
            "path": str(err_path),
            "finished": time.time(),
        },
    )


def finish_group_job(settings: Settings, group: ClaimGroup, job_id: str, *, failed: bool = False) -> None:
    """Record one job's outcome; the last one of the group removes the work file."""
    with group.lock:
        group.done.add(job_id)
        all_done = group.done >= set(group.job_ids)
        if not all_done:
            # Persist progress so a crash mid-batch does not run the finished jobs again.
            atomic_write_bytes(
                done_path(settings, group.claim.claim_id), json.dumps(sorted(group.done)).encode()
            )
            return
        if group.is_batch:
            spool.complete_job(settings, group.claim, group.job_ids)
            try:
                done_path(settings, group.claim.claim_id).unlink()
            except FileNotFoundError:
                pass
        elif not failed:  # a failed single job was moved to failed/ already
            spool.complete_job(settings, group.claim, [job_id])
