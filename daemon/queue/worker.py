"""The worker: the one thread that owns the engine. It takes jobs from the queue, generates,
hands the audio to `results.publish`, and turns every failure into the right outcome:

* engine errors (timeout, out of memory, generation error, unknown model) -> failed/ with their type;
* a user's cancel request -> failed/ with status `cancelled`;
* a shutdown in the middle of a job -> the job goes back to work/ untouched (re-run at next start);
* a write error (full disk, read-only or unwritable outbox) -> the job stays in work/, its audio
  kept in memory, and publishing is retried later: nothing lost, nothing marked invalid.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
from queue import Queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobspec import Job
from jobspec.sidecar import ModelInfo, Timings

from daemon import spool

from daemon.spool import state
from daemon.core.fsio import atomic_write_bytes
from daemon.core.config import Settings
from daemon.engine.model import GenerationRequest, GenerationResult, MusicEngine, Progress
from daemon.core.errors import DgxMusicError, ErrorType, GenerationCancelled, UnknownModelError
from daemon.queue.jobqueue import JobQueue, QueueClosed
from daemon.core.logctx import MESSAGE_ID_JOB_COMPLETED, MESSAGE_ID_JOB_FAILED, job_context, message_id, set_stage
from daemon.outbox.publish import publish

log = logging.getLogger(__name__)

# Errors of the filesystem that a later retry can get past (space freed, permissions fixed).
RETRYABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
RETRY_DELAYS_S = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0)


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
    pending: GenerationResult | None = None  # generated, waiting for the outbox to accept it
    pending_timings: Timings | None = None
    batch_audio_s: float | None = None  # audio seconds of the whole decode batch this job was in
    started_at: float | None = None
    retries: int = 0
    not_before: float = 0.0  # monotonic time before which a retry must wait

    @property
    def priority(self) -> str:
        return self.job.priority

    @property
    def claim(self) -> spool.Claimed:
        return self.group.claim


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in RETRYABLE_ERRNOS




class Worker:
    """Runs queued jobs one after another on `engine` (call `run()` in its own thread)."""

    def __init__(
        self,
        settings: Settings,
        engine: MusicEngine,
        queue: JobQueue[QueuedJob],
        *,
        on_status: Callable[[str], None] = lambda text: None,
        on_step: Callable[[], None] = lambda: None,
        on_long_call: Callable[[float | None], None] = lambda seconds: None,
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.queue = queue
        self.on_status = on_status
        self.on_step = on_step  # the systemd watchdog ping: only from real decoding progress
        self.on_long_call = on_long_call  # widen (seconds) or restore (None) the watchdog timeout
        self.progress = state.ProgressWriter(settings, instance=instance)
        self.stop_event = threading.Event()  # no new jobs
        self.abort_event = threading.Event()  # give the running job back (grace period over)
        self.current: list[QueuedJob] = []  # the jobs being decoded together
        self.current_cancel = threading.Event()
        self.busy = False
        self.deferred: list[QueuedJob] = []
        self._lock = threading.Lock()
        self._to_write: Queue[list[QueuedJob] | None] = Queue(maxsize=2)
        self._writer: threading.Thread | None = None
        self.completed = 0
        self.failed = 0

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        # Loudness, encoding and the fsyncs of one batch overlap the decoding of the next.
        self._writer = threading.Thread(target=self._write_loop, name="dgx-music-writer", daemon=True)
        self._writer.start()
        try:
            while not self.stop_event.is_set():
                self._release_deferred()
                item = self.queue.get(timeout=0.25)
                if item is None:
                    self.engine_idle()
                    continue
                if self.stop_event.is_set():
                    break  # its claim stays in work/; the next start recovers it
                self._run_batch([item, *self._compatible_with(item)])
        finally:
            self._to_write.put(None)
            self._writer.join()  # results in hand are written before the daemon exits
            self.progress.finish()

    def alive(self) -> bool:
        return self._writer is None or self._writer.is_alive()

    def _write_loop(self) -> None:
        while (batch := self._to_write.get()) is not None:
            for item in batch:
                model = item.job.model or self.settings.default_model
                with job_context(job_id=item.job_id, model=model, stage="write"):
                    self._publish_guarded(item)

    def _compatible_with(self, first: QueuedJob) -> list[QueuedJob]:
        """Queued jobs that can share `first`'s decode batch (issue 8: cross-job batching):
        same model and length, none already generated, rows (count) within max_batch."""
        # A crash during a shared decode is blamed on every job in it: a job with a crash on
        # record runs alone, so its next attempt tells the culprit from its batch-mates.
        if first.pending is not None or first.claim.crashes:
            return []
        model = first.job.model or self.settings.default_model
        rows = first.job.count

        def fits(other: QueuedJob) -> bool:
            nonlocal rows
            if other.pending is not None or other.claim.crashes or other.job.duration != first.job.duration:
                return False
            if (other.job.model or self.settings.default_model) != model:
                return False
            if rows + other.job.count > self.settings.max_batch:
                return False
            rows += other.job.count
            return True

        return self.queue.take_compatible(fits, self.settings.max_batch - 1)

    def engine_idle(self) -> None:
        self.engine.maybe_idle_unload(time.monotonic())

    def _release_deferred(self) -> None:
        now = time.monotonic()
        with self._lock:
            ready = [j for j in self.deferred if j.not_before <= now]
            self.deferred = [j for j in self.deferred if j.not_before > now]
        for job in ready:
            self.queue.put(job)

    def retry_deferred_now(self) -> None:
        """Space was freed / reload: retry every deferred job at once."""
        with self._lock:
            for job in self.deferred:
                job.not_before = 0.0

    def cancel_running(self, job_id: str) -> bool:
        if any(j.job_id == job_id for j in self.current):
            self.current_cancel.set()
            return True
        return False

    def remove_deferred(self, job_id: str) -> QueuedJob | None:
        with self._lock:
            for job in self.deferred:
                if job.job_id == job_id:
                    self.deferred.remove(job)
                    return job
        return None

    # ------------------------------------------------------------------ one batch

    def _run_batch(self, batch: list[QueuedJob]) -> None:
        self.current = batch
        self.current_cancel.clear()
        self.busy = True
        first = batch[0]
        model = first.job.model or self.settings.default_model
        try:
            with job_context(job_id=first.job_id, model=model, stage="start"):
                if len(batch) > 1:
                    log.info("decoding %d jobs as one batch: %s", len(batch), ", ".join(j.job_id for j in batch))
                self._generate_guarded(batch, model)
            ready = [item for item in batch if item.pending is not None]
            if ready:
                self._to_write.put(ready)  # blocks while the writer is two batches behind
        finally:
            self.current = []
            self.busy = False
            self.progress.finish()

    def _generate_guarded(self, batch: list[QueuedJob], model: str) -> None:
        todo = [j for j in batch if j.pending is None]
        if not todo:
            return
        try:
            self._generate(todo, model)
        except GenerationCancelled as exc:
            self._after_cancel(todo, exc)
        except DgxMusicError as exc:
            for item in todo:
                log.error("job %s failed: %s", item.job_id, exc)
                self.fail(item, exc.error_type, exc.message, hint=exc.hint)
        except Exception as exc:  # the daemon must outlive any one job
            log.exception("internal error while generating %s", ", ".join(j.job_id for j in todo))
            for item in todo:
                self.fail(item, ErrorType.INTERNAL, f"{type(exc).__name__}: {exc}", hint="see the daemon's journal; report it")

    def _after_cancel(self, todo: list[QueuedJob], exc: GenerationCancelled) -> None:
        cancelled = [j for j in todo if state.cancel_requested(self.settings, j.job_id)]
        if self.abort_event.is_set() and not cancelled:
            for item in todo:
                log.warning("job %s interrupted by shutdown; it stays in work/ and runs again at next start", item.job_id)
                spool.mark_requeued(self.settings, item.claim)
            return
        for item in cancelled or todo:
            state.clear_cancel(self.settings, item.job_id)
            self.fail(item, ErrorType.CANCELLED, "cancelled by request while running", hint=None, status="cancelled")
        # Batch-mates of a cancelled job lost their shared decode, not their turn.
        for item in todo:
            if item not in cancelled and cancelled:
                spool.mark_requeued(self.settings, item.claim)
                try:
                    self.queue.put(item)
                except QueueClosed:
                    pass  # stopping: its claim stays in work/ for the next start

    def _publish_guarded(self, item: QueuedJob) -> None:
        try:
            self._publish(item)
        except DgxMusicError as exc:
            self.fail(item, exc.error_type, exc.message, hint=exc.hint)
        except OSError as exc:
            if is_retryable(exc):
                self._defer(item, exc)
                return
            log.exception("job %s: unexpected I/O error", item.job_id)
            self.fail(item, ErrorType.INTERNAL, f"I/O error: {exc}", hint="see the daemon's journal")
        except Exception as exc:
            log.exception("job %s: internal error", item.job_id)
            self.fail(item, ErrorType.INTERNAL, f"{type(exc).__name__}: {exc}", hint="see the daemon's journal; report it")

    def _request(self, job: Job) -> GenerationRequest:
        s = job.sampling
        return GenerationRequest(
            prompt=job.prompt,
            duration=job.duration,
            count=job.count,
            seed=job.seed,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            cfg_coef=s.cfg_coef,
            greedy=s.greedy,
        )

    def _generate(self, batch: list[QueuedJob], name: str) -> None:
        if name not in self.settings.models:
            raise UnknownModelError(
                f"model {name!r} is not configured on this daemon",
                hint=f"use one of: {', '.join(sorted(self.settings.models))}",
            )
        for item in batch:
            self.claim_started(item)
            item.started_at = time.time()
        load_s = 0.0
        if not self.engine.is_loaded(name):
            set_stage("load")
            self.on_status(f"loading model {name}")
            t0 = time.monotonic()
            # A load cannot ping per step: widen the watchdog for it instead of being killed.
            self.on_long_call(900)
            try:
                self.engine.load_model(name)
            finally:
                self.on_long_call(None)
            load_s = time.monotonic() - t0
        set_stage("generate")
        first = batch[0]
        self.progress.start(
            first.job_id, frames_total=0, model=name, source_file=first.claim.source_name,
            batch=[j.job_id for j in batch], sources=[j.claim.source_name for j in batch],
        )
        label = first.job_id if len(batch) == 1 else f"{first.job_id} (+{len(batch) - 1} batched)"
        last_status = [0.0]

        def on_progress(p: Progress) -> None:
            self.on_step()
            if self.current_cancel.is_set() or any(state.cancel_requested(self.settings, j.job_id) for j in batch):
                raise GenerationCancelled(f"job {label} cancelled")
            if self.abort_event.is_set():
                raise GenerationCancelled("daemon stopping")
            self.progress.update(p.frames_done, p.frames_total)
            now = time.monotonic()
            if now - last_status[0] >= 1.0:
                last_status[0] = now
                self.on_status(f"job {label} {int(p.fraction * 100)}% ({len(self.queue)} queued)")

        t0 = time.monotonic()
        results = self.engine.generate(
            [self._request(j.job) for j in batch],
            model=name,
            progress=on_progress,
            cancel=self.current_cancel,
            timeout_s=self.settings.job_timeout_s,
        )
        gen_s = time.monotonic() - t0
        # RTF of a batched job is the batch's: generate seconds over all audio the decode made.
        batch_audio_s = sum(r.audio_seconds for r in results)
        for item, result in zip(batch, results, strict=True):
            item.batch_audio_s = batch_audio_s
            queue_s = max(0.0, (item.started_at or 0.0) - item.queued_at)
            item.pending = result
            item.pending_timings = Timings(
                queue_s=round(queue_s, 4), model_load_s=round(load_s, 4), generate_s=round(gen_s, 4)
            )
            # Generated: a crash from here on (the next batch's) is not this job's doing.
            item.group.claim = spool.mark_requeued(self.settings, item.claim)

    def claim_started(self, item: QueuedJob) -> None:
        # Blame a crash from here on on this job (attempt count for `crashed`).
        new = spool.mark_started(self.settings, item.claim)
        item.group.claim = new

    def _publish(self, item: QueuedJob) -> None:
        assert item.pending is not None and item.pending_timings is not None
        set_stage("write")
        res = item.pending
        job = item.job.model_copy(update={"model": item.job.model or self.settings.default_model})
        out = publish(
            self.settings.outbox,
            job_id=item.job_id,
            job=job,
            seed=res.seed,
            audio=res.audio,
            sample_rate=res.sample_rate,
            source_file=item.claim.source_name,
            submitted=item.claim.submitted_at,
            started=item.started_at or time.time(),
            model=ModelInfo(**res.model.sidecar_fields()),
            timings=item.pending_timings,
            peak_memory_bytes=res.peak_memory_bytes,
            normalize_audio=self.settings.normalize_audio,
            rtf_audio_s=item.batch_audio_s,
        )
        sc = out.sidecar
        self.completed += 1
        loud = ", ".join(f"{o.integrated_lufs} LUFS" for o in sc.outputs if o.integrated_lufs is not None) or "n/a"
        log.info(
            "job %s completed: %.1f s audio x%d in %.2f s (RTF %.3f), %s, -> %s",
            item.job_id,
            sc.outputs[0].duration_s,
            len(sc.outputs),
            sc.timings.generate_s,
            sc.rtf,
            loud,
            out.sidecar_path,
            extra=message_id(MESSAGE_ID_JOB_COMPLETED),
        )
        state.record_outcome(
            self.settings,
            {"job_id": item.job_id, "status": "completed", "path": str(out.sidecar_path), "finished": time.time()},
        )
        self.finish(item)

    def _defer(self, item: QueuedJob, exc: OSError) -> None:
        delay = RETRY_DELAYS_S[min(item.retries, len(RETRY_DELAYS_S) - 1)]
        item.retries += 1
        item.not_before = time.monotonic() + delay
        log.error(
            "job %s: cannot write its results (%s); keeping it in work/ and retrying in %.0f s",
            item.job_id,
            exc.strerror or exc,
            delay,
        )
        self.on_status(f"job {item.job_id} waiting for the outbox ({exc.strerror or exc})")
        with self._lock:
            self.deferred.append(item)

    # ------------------------------------------------------------------ outcomes

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
                self.settings, item.group, item.job_id, item.job, error_type, message,
                hint=hint, status=status, details=details, started_at=item.started_at,
            )
        except OSError as exc:
            # Even the error sidecar cannot be written (full disk): keep the job in work/ rather
            # than lose it or kill the worker; the next start runs it again.
            log.error("job %s: cannot record its %s outcome (%s); it stays in work/ for the next start",
                      item.job_id, error_type, exc)
            with contextlib.suppress(OSError):  # the meta write may fail the same way
                spool.mark_requeued(self.settings, item.claim)
            return
        self.failed += 1
        self.finish(item, failed=True)

    def finish(self, item: QueuedJob, *, failed: bool = False) -> None:
        finish_group_job(self.settings, item.group, item.job_id, failed=failed)


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
    spool.fail_job(settings, claim, body, job_id=job_id, keep_work=group.is_batch)
    log.warning("job %s %s: %s: %s", job_id, status, error_type, message, extra=message_id(MESSAGE_ID_JOB_FAILED))
    state.record_outcome(
        settings,
        {"job_id": job_id, "status": status, "error": error_type, "path": str(settings.failed / f"{job_id}.error.json"), "finished": time.time()},
    )


def finish_group_job(settings: Settings, group: ClaimGroup, job_id: str, *, failed: bool = False) -> None:
    """Record one job's outcome; the last one of the group removes the work file."""
    with group.lock:
        group.done.add(job_id)
        all_done = group.done >= set(group.job_ids)
        if not all_done:
            # Persist progress so a crash mid-batch does not run the finished jobs again.
            atomic_write_bytes(done_path(settings, group.claim.claim_id), json.dumps(sorted(group.done)).encode())
            return
        if group.is_batch:
            spool.complete_job(settings, group.claim, group.job_ids)
            try:
                done_path(settings, group.claim.claim_id).unlink()
            except FileNotFoundError:
                pass
        elif not failed:  # a failed single job was moved to failed/ already
            spool.complete_job(settings, group.claim, [job_id])
