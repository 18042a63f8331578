"""Publishing results off the decode thread, and holding them while the outbox refuses them.

Loudness, encoding and the fsyncs of one batch overlap the decoding of the next. A write error
that a retry can get past (full disk, read-only or unwritable outbox) keeps the job in work/
with its audio kept (in state/, or in memory when the disk is full) and retries with backoff:
nothing lost, nothing marked invalid.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from queue import Queue

from daemon.core.config import Settings
from daemon.core.errors import DgxMusicError, ErrorType
from daemon.core.logctx import job_context, set_stage
from daemon.core.messages import Generated
from daemon.queue.jobqueue import JobQueue
from daemon.queue.jobs import Outcomes, QueuedJob, is_retryable

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0)

# Writes a generated job's files and returns its sidecar path (the outbox stage, injected).
PublishFn = Callable[[Generated], Path]


class Publisher:
    """A writer thread in front of `publish`; deferred jobs go back to `queue` when due."""

    def __init__(
        self,
        settings: Settings,
        publish: PublishFn,
        outcomes: Outcomes,
        queue: JobQueue[QueuedJob],
        *,
        on_status: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.settings = settings
        self.publish = publish
        self.outcomes = outcomes
        self.queue = queue
        self.on_status = on_status
        self.deferred: list[QueuedJob] = []
        self._lock = threading.Lock()
        self._to_write: Queue[list[QueuedJob] | None] = Queue(maxsize=2)
        self._writer: threading.Thread | None = None

    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="dgx-music-writer", daemon=True)
        self._writer.start()

    def submit(self, batch: list[QueuedJob]) -> None:
        """Hand generated jobs over; blocks while the writer is two batches behind."""
        self._to_write.put(batch)

    def close(self) -> None:
        """Write what is in hand, then stop the thread."""
        self._to_write.put(None)
        if self._writer is not None:
            self._writer.join()

    def alive(self) -> bool:
        return self._writer is None or self._writer.is_alive()

    def _write_loop(self) -> None:
        while (batch := self._to_write.get()) is not None:
            for item in batch:
                model = item.job.model or self.settings.default_model
                with job_context(job_id=item.job_id, model=model, stage="write"):
                    self._publish_guarded(item)

    def _publish_guarded(self, item: QueuedJob) -> None:
        try:
            set_stage("write")
            assert item.pending is not None
            sidecar_path = self.publish(item.pending)
        except DgxMusicError as exc:
            self.outcomes.fail(item, exc.error_type, exc.message, hint=exc.hint)
        except OSError as exc:
            if is_retryable(exc):
                self._defer(item, exc)
                return
            log.exception("job %s: unexpected I/O error", item.job_id)
            self.outcomes.fail(item, ErrorType.INTERNAL, f"I/O error: {exc}", hint="see the daemon's journal")
        except Exception as exc:
            log.exception("job %s: internal error", item.job_id)
            self.outcomes.fail(
                item,
                ErrorType.INTERNAL,
                f"{type(exc).__name__}: {exc}",
                hint="see the daemon's journal; report it",
            )
        else:
            self.outcomes.complete(item, sidecar_path)

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

    def release_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            ready = [j for j in self.deferred if j.not_before <= now]
            self.deferred = [j for j in self.deferred if j.not_before > now]
        for job in ready:
            self.queue.put(job)

    def retry_now(self) -> None:
        """Space was freed / reload: retry every deferred job at once."""
        with self._lock:
            for job in self.deferred:
                job.not_before = 0.0

    def remove(self, job_id: str) -> QueuedJob | None:
        with self._lock:
            for job in self.deferred:
                if job.job_id == job_id:
                    self.deferred.remove(job)
                    return job
        return None
