"""Admission: a claimed job file becomes queued jobs, or an outcome in failed/.

Each job of the file gets its result id reserved; a recovered claim skips the jobs whose outcome
is already on disk and removes the audio its interrupted attempt left without a sidecar; a job
naming an unknown model, or cancelled before pickup, ends here; an unreadable or invalid file
goes to failed/ untouched with the reason.
"""

from __future__ import annotations

import logging
import os
import time

from daemon import spool
from daemon.core.config import Settings
from daemon.core.errors import ErrorType
from daemon.core.logctx import job_context
from daemon.core.memory import admission_refusal
from daemon.queue.jobqueue import JobQueue, QueueClosed
from daemon.queue.jobs import ClaimGroup, QueuedJob, fail_group_job, finish_group_job, load_done
from daemon.spool import state
from jobspec import ErrorDetail, Job, JobSpecError, default_job_id, load_job_bytes
from jobspec.names import audio_names, source_folder

log = logging.getLogger("daemon.service.daemon")  # operators grep the daemon's records for these


def _audio_names(job_id: str, job: Job) -> list[str]:
    kept = job.candidates if job.keep_candidates else 0
    tracks = tuple(job.extract.tracks) if job.extract is not None else ()
    return audio_names(job_id, ext=job.output.format, count=job.count, kept_candidates=kept, tracks=tracks)


class Admission:
    """Turns claims into queued jobs (the service calls it from the watcher and at recovery)."""

    def __init__(self, settings: Settings, queue: JobQueue[QueuedJob]) -> None:
        self.settings = settings
        self.queue = queue

    def accept(self, claimed: spool.Claimed, *, done: set[str], recovered: bool = False) -> None:
        s = self.settings
        picked = time.time()
        try:
            data = claimed.read_bytes(s.max_job_bytes)
            jobs = load_job_bytes(
                data, claimed.source_name, max_bytes=s.max_job_bytes, max_duration=s.max_duration
            )
        except JobSpecError as exc:
            self.reject(claimed, exc)
            return
        except FileNotFoundError:
            log.error("work/%s vanished after its claim (removed by hand?)", claimed.work_path.name)
            return
        except OSError as exc:
            # Unreadable (mode 0600 by another user, EIO): to failed/ untouched, with the reason;
            # left in work/ it would sit there until the daemon restarts.
            why = exc.strerror or str(exc)
            self.reject(
                claimed,
                JobSpecError(
                    [
                        ErrorDetail(
                            loc="",
                            msg=f"cannot read the job file: {why}",
                            hint="make it readable by the dgx-music group (chmod g+r FILE), "
                            "then submit it again",
                        )
                    ],
                    filename=claimed.source_name,
                ),
            )
            return
        group = ClaimGroup(claim=claimed, job_ids=[])
        items: list[QueuedJob] = []
        folder = source_folder(claimed.source_name)
        for job in jobs:
            job_id = spool.reserve_id(
                s, job.id, lambda i, j=job: _audio_names(i, j), claim_id=claimed.claim_id, folder=folder
            )
            group.job_ids.append(job_id)
            # A recovered claim may have written this job's outcome just before it died.
            if job_id in done or (recovered and spool.outcome_exists(s, job_id, folder)):
                group.done.add(job_id)
                continue
            if recovered:
                # Killed between its audio and its sidecar: audio under this reserved id is the
                # job's own partial result, invisible to readers (no sidecar); it is written again.
                for name in _audio_names(job_id, job):
                    try:
                        os.unlink(spool.result_dirs(s, folder)[0] / name)
                        log.warning("removed outbox/%s left by the interrupted attempt of %s", name, job_id)
                    except FileNotFoundError:
                        pass
            items.append(QueuedJob(group=group, job=job, job_id=job_id, queued_at=picked))
        if not items and group.job_ids:
            finish_group_job(s, group, group.job_ids[-1])  # everything was done already
            return
        for item in items:
            with job_context(job_id=item.job_id, model=item.job.model or s.default_model, stage="queued"):
                if item.job.model is not None and item.job.model not in s.models:
                    fail_group_job(
                        s,
                        group,
                        item.job_id,
                        item.job,
                        ErrorType.UNKNOWN_MODEL,
                        f"model {item.job.model!r} is not configured on this daemon",
                        hint=f"use one of: {', '.join(sorted(s.models))} "
                        f"(or leave `model:` out for {s.default_model})",
                    )
                    finish_group_job(s, group, item.job_id, failed=True)
                    continue
                refusal = admission_refusal(
                    set(item.job.model_fields_set),
                    item.job.duration,
                    item.job.count * item.job.candidates,  # the rows decoded
                    item.job.model or s.default_model,
                    s,
                )
                if refusal is not None:
                    fail_group_job(
                        s, group, item.job_id, item.job, ErrorType.INVALID_JOB, refusal[0], hint=refusal[1]
                    )
                    finish_group_job(s, group, item.job_id, failed=True)
                    continue
                if self._cancelled_before_pickup(item, claimed):
                    continue
                try:
                    self.queue.put(item)
                except QueueClosed:
                    return  # stopping: the claim stays in work/ for the next start
                log.info(
                    "queued %s from %s (%s, %.0f s x%d)",
                    item.job_id,
                    claimed.source_name,
                    item.job.priority,
                    item.job.duration,
                    item.job.count,
                )
        # state/queue.json follows within a second (main loop): rewriting it per pickup would
        # cost O(n^2) bytes in a burst of n jobs.

    def _cancelled_before_pickup(self, item: QueuedJob, claimed: spool.Claimed) -> bool:
        # `cancel` asks by request when it may not move an inbox file to failed/ itself.
        s = self.settings
        ids = {item.job_id, item.job.id} - {None}
        if not any(state.cancel_requested(s, i, since=claimed.submitted_at) for i in ids):
            return False
        for i in ids:
            state.clear_cancel(s, i)
        fail_group_job(
            s,
            item.group,
            item.job_id,
            item.job,
            ErrorType.CANCELLED,
            "cancelled by request before it was picked up",
            hint=None,
            status="cancelled",
        )
        finish_group_job(s, item.group, item.job_id, failed=True)
        return True

    def reject(self, claimed: spool.Claimed, exc: JobSpecError) -> None:
        s = self.settings
        job_id = spool.reserve_id(
            s,
            default_job_id(claimed.source_name),
            lambda i: [],
            claim_id=claimed.claim_id,
            folder=source_folder(claimed.source_name),
        )
        group = ClaimGroup(claim=claimed, job_ids=[job_id])
        # One record: the failed job's WARNING (its message names file, line and field).
        with job_context(job_id=job_id, stage="validate"):
            fail_group_job(
                s,
                group,
                job_id,
                None,
                ErrorType.INVALID_JOB,
                exc.message,
                hint=next(
                    (d.hint for d in exc.details if d.hint),
                    "run `dgx-music validate FILE` before dropping it",
                ),
                details=[d.model_dump(mode="json") for d in exc.details],
            )

    def recover(self) -> None:
        """Take over the claims of dead daemons (at start and periodically) and queue them again."""
        s = self.settings
        recovered = spool.recover(s)
        if not recovered:
            return
        crashed = [c for c in recovered if c.crashed]
        log.warning(
            "recovered %d job file(s) from work/ (%d failed as crashed)", len(recovered), len(crashed)
        )
        for claimed in recovered:
            done = load_done(s, claimed.claim_id)
            if claimed.crashed:
                self._fail_crashed(claimed, done)
            else:
                self.accept(claimed, done=done, recovered=True)

    def _fail_crashed(self, claimed: spool.Claimed, done: set[str]) -> None:
        s = self.settings
        try:
            jobs = load_job_bytes(
                claimed.read_bytes(s.max_job_bytes),
                claimed.source_name,
                max_bytes=s.max_job_bytes,
                max_duration=s.max_duration,
            )
        except (JobSpecError, OSError):
            jobs = []
        group = ClaimGroup(claim=claimed, job_ids=[])
        pairs = []
        for job in jobs or [None]:
            base = job.id if job is not None else default_job_id(claimed.source_name)
            job_id = spool.reserve_id(
                s,
                base,
                (lambda i, j=job: _audio_names(i, j) if j else []),
                claim_id=claimed.claim_id,
                folder=source_folder(claimed.source_name),
            )
            group.job_ids.append(job_id)
            if job_id in done:
                group.done.add(job_id)
            else:
                pairs.append((job_id, job))
        for job_id, job in pairs:
            fail_group_job(
                s,
                group,
                job_id,
                job,
                ErrorType.CRASHED,
                f"the daemon died {claimed.crashes} time(s) while running this job",
                hint="check `journalctl -u dgx-music` around the crashes; "
                "resubmit with a shorter duration or another model",
            )
            finish_group_job(s, group, job_id, failed=True)
