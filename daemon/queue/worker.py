"""The worker: the one thread that owns the engine. It takes jobs from the queue, generates,
hands the audio to the publisher (`queue/publisher.py`), and turns every failure into the right
outcome (the engine and the publish step are injected by the service):

* engine errors (timeout, out of memory, generation error, unknown model) -> failed/ with their type;
* a user's cancel request -> failed/ with status `cancelled`;
* a shutdown in the middle of a job -> the job goes back to work/ untouched (re-run at next start);
* a write error (full disk, read-only or unwritable outbox) -> the job stays in work/, its audio
  kept (daemon.core.pcm), and publishing is retried later: nothing lost, nothing marked invalid.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from daemon import spool
from daemon.core.config import Settings
from daemon.core.errors import (
    DgxMusicError,
    ErrorType,
    GenerationCancelled,
    InvalidJobError,
    UnknownModelError,
)
from daemon.core.eta import format_eta
from daemon.core.logctx import job_context, set_stage
from daemon.core.messages import Generated, GenerationRequest, GenerationResult, LoadedModelInfo, Progress
from daemon.queue.jobqueue import JobQueue, QueueClosed
from daemon.queue.jobs import Outcomes, QueuedJob
from daemon.queue.publisher import Publisher, PublishFn
from daemon.queue.requests import engine_request, read_references
from daemon.spool import state
from jobspec import ErrorDetail, locate_field
from jobspec.sidecar import ReferenceInfo, Timings

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What the worker needs of the engine (the service injects `MusicEngine`)."""

    def is_loaded(self, name: str | None = None) -> bool: ...

    def load_model(self, name: str | None = None) -> LoadedModelInfo: ...

    def maybe_idle_unload(self, now: float) -> Any: ...

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        model: str | None = None,
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
        timeout_s: float | None = None,
        job_ids: Sequence[str] | None = None,
    ) -> list[GenerationResult]: ...


class Worker:
    """Runs queued jobs one after another on `engine` (call `run()` in its own thread)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        queue: JobQueue[QueuedJob],
        publish: PublishFn,
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
        self.outcomes = Outcomes(settings)
        self.publisher = Publisher(settings, publish, self.outcomes, queue, on_status=on_status)

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        # Loudness, encoding and the fsyncs of one batch overlap the decoding of the next.
        self.publisher.start()
        try:
            while not self.stop_event.is_set():
                self.publisher.release_due()
                item = self.queue.get(timeout=0.25)
                if item is None:
                    self.engine_idle()
                    continue
                if self.stop_event.is_set():
                    break  # its claim stays in work/; the next start recovers it
                self._run_batch([item, *self._compatible_with(item)])
        finally:
            self.publisher.close()  # results in hand are written before the daemon exits
            self.progress.finish()

    def alive(self) -> bool:
        return self.publisher.alive()

    def update_settings(self, settings: Settings) -> None:
        """A reloaded configuration (SIGHUP): every part of the stage uses it from now on."""
        self.settings = self.outcomes.settings = self.publisher.settings = settings

    def _compatible_with(self, first: QueuedJob) -> list[QueuedJob]:
        """Queued jobs that can share `first`'s decode batch (cross-job batching):
        same model and length, none already generated, rows (count) within max_batch."""

        # A crash during a shared decode is blamed on every job in it: a job with a crash on
        # record runs alone, so its next attempt tells the culprit from its batch-mates.
        # Sections and reference audio give a job windows of its own (text, prefix codes, chroma).
        # A `guidance` may be refused by the model (a turbo ACE-Step checkpoint): such a job runs
        # alone, so a refusal never fails its batch-mates. Jobs share a batch only when they share
        # the adapter state (none, or one adapter at one scale): a refused adapter fails only jobs
        # that named it.
        def alone(j: QueuedJob) -> bool:
            return (
                j.pending is not None or bool(j.claim.crashes) or j.conditioned or j.job.guidance is not None
            )

        def shares(j: QueuedJob) -> tuple[object, ...]:
            model = j.job.model or self.settings.default_model
            return (model, j.job.duration, j.job.adapter, j.job.adapter_scale)

        if alone(first):
            return []
        rows = first.job.count * first.job.candidates  # best of N decodes every take

        def fits(other: QueuedJob) -> bool:
            nonlocal rows
            more = other.job.count * other.job.candidates
            if alone(other) or shares(other) != shares(first) or rows + more > self.settings.max_batch:
                return False
            rows += more
            return True

        return self.queue.take_compatible(fits, self.settings.max_batch - 1)

    def engine_idle(self) -> None:
        self.engine.maybe_idle_unload(time.monotonic())

    @property
    def deferred(self) -> list[QueuedJob]:
        return self.publisher.deferred

    def retry_deferred_now(self) -> None:
        """Space was freed / reload: retry every deferred job at once."""
        self.publisher.retry_now()

    def cancel_running(self, job_id: str) -> bool:
        if any(j.job_id == job_id for j in self.current):
            self.current_cancel.set()
            return True
        return False

    def remove_deferred(self, job_id: str) -> QueuedJob | None:
        return self.publisher.remove(job_id)

    # ------------------------------------------------------------------ one batch

    def _run_batch(self, batch: list[QueuedJob]) -> None:
        self.current = batch
        self.current_cancel.clear()
        self.busy = True
        first = batch[0]
        model = first.job.model or self.settings.default_model
        try:
            with job_context(
                job_id=first.job_id, model=model, stage="start", batch=[j.job_id for j in batch]
            ):
                if len(batch) > 1:
                    log.info(
                        "decoding %d jobs as one batch: %s", len(batch), ", ".join(j.job_id for j in batch)
                    )
                self._generate_guarded(batch, model)
            ready = [item for item in batch if item.pending is not None]
            if ready:
                self.publisher.submit(ready)  # blocks while the writer is two batches behind
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
        except InvalidJobError as exc:
            for item in todo:
                with _own(item):
                    self._fail_invalid(item, exc)
        except DgxMusicError as exc:
            # The failed outcome's WARNING record is the one line about it, under the job's own id.
            for item in todo:
                with _own(item):
                    self.outcomes.fail(item, exc.error_type, exc.message, hint=exc.hint)
        except Exception as exc:  # the daemon must outlive any one job
            log.exception("internal error while generating %s", ", ".join(j.job_id for j in todo))
            for item in todo:
                with _own(item):
                    self.outcomes.fail(
                        item,
                        ErrorType.INTERNAL,
                        f"{type(exc).__name__}: {exc}",
                        hint="see the daemon's journal; report it",
                    )

    def _after_cancel(self, todo: list[QueuedJob], exc: GenerationCancelled) -> None:
        cancelled = [j for j in todo if state.cancel_requested(self.settings, j.job_id)]
        if self.abort_event.is_set() and not cancelled:
            for item in todo:
                with _own(item):
                    log.warning(
                        "job %s interrupted by shutdown; it stays in work/ and runs again at next start",
                        item.job_id,
                    )
                spool.mark_requeued(self.settings, item.claim)
            return
        for item in cancelled or todo:
            state.clear_cancel(self.settings, item.job_id)
            with _own(item):
                self.outcomes.fail(
                    item,
                    ErrorType.CANCELLED,
                    "cancelled by request while running",
                    hint=None,
                    status="cancelled",
                )
        # Batch-mates of a cancelled job lost their shared decode, not their turn.
        for item in todo:
            if item not in cancelled and cancelled:
                spool.mark_requeued(self.settings, item.claim)
                try:
                    self.queue.put(item)
                except QueueClosed:
                    pass  # stopping: its claim stays in work/ for the next start

    def _fail_invalid(self, item: QueuedJob, exc: InvalidJobError) -> None:
        """An invalid_job found at run time, reported like the validator's: field, line, hint."""
        loc, line = exc.loc, exc.line
        if line is None:
            try:
                data = item.claim.read_bytes(self.settings.max_job_bytes)
            except OSError:
                data = b""
            ids = item.group.job_ids
            index = ids.index(item.job_id) if item.job_id in ids else 0
            if data:
                loc, line = locate_field(data, item.claim.source_name, index, exc.loc)
        detail = ErrorDetail(loc=loc, line=line, msg=exc.message, hint=exc.hint)
        self.outcomes.fail(
            item,
            ErrorType.INVALID_JOB,
            detail.format(item.claim.source_name),
            hint=exc.hint,
            details=[detail.model_dump(mode="json")],
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
            item.references = read_references(self.settings, item.job)
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
            first.job_id,
            frames_total=0,
            model=name,
            source_file=first.claim.source_name,
            batch=[j.job_id for j in batch],
            sources=[j.claim.source_name for j in batch],
        )
        label = first.job_id if len(batch) == 1 else f"{first.job_id} (+{len(batch) - 1} batched)"
        last_status = [0.0]

        def on_progress(p: Progress) -> None:
            self.on_step()
            if self.current_cancel.is_set() or any(
                state.cancel_requested(self.settings, j.job_id) for j in batch
            ):
                raise GenerationCancelled(f"job {label} cancelled")
            if self.abort_event.is_set():
                raise GenerationCancelled("daemon stopping")
            self.progress.update(p.frames_done, p.frames_total)
            now = time.monotonic()
            if now - last_status[0] >= 1.0:
                last_status[0] = now
                eta = format_eta(self.progress.eta_s)
                self.on_status(
                    f"job {label} {int(p.fraction * 100)}% ({len(self.queue)} queued)"
                    + (f", {eta}" if eta else "")
                )

        t0 = time.monotonic()
        results = self.engine.generate(
            [engine_request(j.job, j.references) for j in batch],
            model=name,
            progress=on_progress,
            cancel=self.current_cancel,
            timeout_s=self.settings.job_timeout_s,
            job_ids=[j.job_id for j in batch],
        )
        gen_s = time.monotonic() - t0
        # RTF of a batched job is the batch's: generate seconds over all audio the decode made.
        batch_audio_s = sum(r.audio_seconds for r in results)
        for item, result in zip(batch, results, strict=True):
            queue_s = max(0.0, (item.started_at or 0.0) - item.queued_at)
            item.pending = self._generated(
                item,
                result,
                Timings(queue_s=round(queue_s, 4), model_load_s=round(load_s, 4), generate_s=round(gen_s, 4)),
                batch_audio_s,
            )
            # Generated: a crash from here on (the next batch's) is not this job's doing.
            item.group.claim = spool.mark_requeued(self.settings, item.claim)

    def _generated(
        self, item: QueuedJob, result: GenerationResult, timings: Timings, batch_audio_s: float
    ) -> Generated:
        """The hand-off to the outbox: the job as it ran, its result and what it took."""
        update: dict[str, Any] = {"model": item.job.model or self.settings.default_model}
        if result.request is not None and result.request.edit is not None:
            update["duration"] = round(result.samples / result.sample_rate, 6)
        return Generated(
            job_id=item.job_id,
            job=item.job.model_copy(update=update),
            source_file=item.claim.source_name,
            submitted=item.claim.submitted_at,
            started=item.started_at or time.time(),
            result=result,
            timings=timings,
            batch_audio_s=batch_audio_s,
            references=tuple(
                ReferenceInfo(
                    **r.sidecar_fields(),
                    used_s=round(result.continued_s, 6) if r.role == "continue_from" else None,
                )
                for r in item.references
            ),
        )

    def claim_started(self, item: QueuedJob) -> None:
        # Blame a crash from here on on this job (attempt count for `crashed`).
        new = spool.mark_started(self.settings, item.claim)
        item.group.claim = new

    # ------------------------------------------------------------------ outcomes


def _own(item: QueuedJob) -> contextlib.AbstractContextManager[object]:
    """Records about one job of a batch carry that job's id alone."""
    return job_context(job_id=item.job_id, batch=())
