"""`dgx-music serve`: the long-running daemon.

Threads: the watcher's (events and rescans; it calls `pickup`), the worker (owns the engine),
and the main thread, which handles signals, cancel requests, the status file, the periodic
recovery of jobs left by dead peers, and the systemd watchdog while idle. During a generation
the watchdog is fed from the decoding steps only, so a stuck generation stops the pings and
systemd restarts the daemon.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from daemon import spool
from daemon.core.config import ConfigError, Settings, load_settings
from daemon.core.errors import DgxMusicError, ErrorType, ExitCode
from daemon.core.logctx import job_context
from daemon.engine.model import MusicEngine
from daemon.outbox.publish import publish_job
from daemon.queue.admit import Admission
from daemon.queue.jobqueue import JobQueue
from daemon.queue.jobs import QueuedJob, fail_group_job, finish_group_job
from daemon.queue.worker import Worker
from daemon.service.faults import apply_identity, faults_from_environment, with_faults
from daemon.service.loadlog import LoadReporter
from daemon.service.notify import Notifier
from daemon.service.outcomes import OutcomeObserver, queue_snapshot
from daemon.spool import state
from daemon.spool.owner import host_name
from daemon.spool.peers import Heartbeat
from daemon.spool.watcher import InboxWatcher

log = logging.getLogger(__name__)

EXIT_OK = ExitCode.OK
EXIT_FAILED = ExitCode.JOB_FAILED
# sysexits.h codes the units know: 78 stops the restart loop (a restart cannot fix a config),
# 69 is retried with systemd's back-off (a model on a network disk or a GPU may come back).
EXIT_CONFIG = ExitCode.CONFIG
EXIT_MODEL_LOAD = ExitCode.UNAVAILABLE
TICK_S = 0.25
CANCEL_SCAN_S = 0.5


class Daemon:
    def __init__(
        self, settings: Settings, *, config_path: Path | None, notifier: Notifier | None = None
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        faults = faults_from_environment()
        apply_identity(faults)
        self.engine = LoadReporter(with_faults(MusicEngine(settings), faults), self._status)
        self.queue: JobQueue[QueuedJob] = JobQueue()
        self.instance = f"{host_name()}-{os.getpid()}"
        self.heartbeat = Heartbeat(settings, self.instance)
        self.worker = Worker(
            settings,
            self.engine,
            self.queue,
            lambda done: publish_job(self.settings, done),
            on_status=self._status,
            on_step=self.notifier.watchdog,
            on_long_call=self.notifier.set_watchdog_timeout,
            instance=self.instance,
        )
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._pickup_lock = threading.Lock()
        self.watcher: InboxWatcher | None = None
        self._worker_thread: threading.Thread | None = None
        self._queue_file_failing = False
        self.admission = Admission(settings, self.queue)
        self.observer = OutcomeObserver(settings)
        self._gauges = lambda: self.observer.gauges(self.engine, self.queue, self.worker)

    # ------------------------------------------------------------------ start

    def run(self) -> int:
        self._install_signals()
        s = self.settings
        spool.ensure_layout(s)
        (s.state_dir / "batches").mkdir(exist_ok=True)
        spool.clean_stale_temps(s)
        state.remove_dead_instances(s)
        # Before the first claim: peers on other hosts judge our claims by this file.
        self.heartbeat.beat(phase="loading")
        name = s.default_model
        self._status(f"loading model {name}")
        # Big checkpoints take minutes: ask systemd for time instead of being killed mid-load.
        self.notifier.extend_timeout(900)
        self.notifier.set_watchdog_timeout(900)
        try:
            info = self.engine.load_model(name)
        except DgxMusicError as exc:
            log.critical("cannot load model %s: %s: %s", name, type(exc).__name__, exc)
            self._status(f"failed: cannot load model {name}")
            return EXIT_MODEL_LOAD
        log.info(
            "model %s ready on %s (%s, %.1f M parameters, loaded in %.1f s)",
            name,
            info.device,
            info.dtype,
            info.parameters / 1e6,
            info.load_s,
        )
        self.notifier.set_watchdog_timeout(None)
        state.add_outcome_listener(self.observer.on_outcome)
        self.admission.recover()
        self.watcher = InboxWatcher(s, self.pickup)
        self.watcher.start()
        self._worker_thread = threading.Thread(target=self.worker.run, name="dgx-music-worker", daemon=True)
        self._worker_thread.start()
        self.notifier.ready(status=self._idle_text())
        self.heartbeat.beat(phase="serving")
        log.info("ready: watching %s", s.inbox)
        try:
            self._main_loop()
        finally:
            self._shutdown()
        return EXIT_OK

    def _install_signals(self) -> None:
        def on_term(signum: int, frame: FrameType | None) -> None:
            self._stop.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    # ------------------------------------------------------------------ pickup

    def pickup(self, path: Path) -> None:
        """Called by the watcher for each candidate in the inbox: claim, validate, enqueue."""
        if self._stop.is_set():
            return
        with self._pickup_lock:
            claimed = spool.claim(self.settings, path)
            if claimed is None:
                return
            self.admission.accept(claimed, done=set())

    # ------------------------------------------------------------------ main loop

    def _main_loop(self) -> None:
        s = self.settings
        last_cancel = last_recover = last_queue = last_beat = 0.0
        while not self._stop.wait(TICK_S):
            now = time.monotonic()
            if self._reload.is_set():
                self._reload.clear()
                self._do_reload()
            if not self.worker.busy:
                self.notifier.watchdog()
                self.notifier.status(self._idle_text())
            else:
                # A decode step that stalls would leave its last progress unwritten (the writer
                # is rate-limited and only the next step writes): status shows it within a tick.
                self._housekeeping(self.worker.progress.flush)
            if now - last_cancel >= CANCEL_SCAN_S:
                last_cancel = now
                self._housekeeping(self._handle_cancels)
            if now - last_beat >= s.heartbeat_interval_s:
                last_beat = now
                self._housekeeping(self._beat)
            if now - last_queue >= 1.0:
                last_queue = now
                self._write_queue()
            self.observer.tick(self._gauges, now)
            self._housekeeping(self._retention)
            if now - last_recover >= s.rescan_interval_s:
                last_recover = now
                with self._pickup_lock:
                    self._housekeeping(self.admission.recover)  # jobs of a peer daemon that died
            if self._worker_thread is not None and not (
                self._worker_thread.is_alive() and self.worker.alive()
            ):
                log.critical("the worker or writer thread died; exiting so systemd restarts the daemon")
                raise SystemExit(EXIT_FAILED)

    def _housekeeping(self, task: Callable[[], object]) -> None:
        # A full or failing disk must not end the daemon from its main loop: the jobs stay
        # where they are on disk and the task runs again on the next tick.
        try:
            task()
        except OSError as exc:
            log.error("%s failed: %s; retrying shortly", task.__name__.strip("_").replace("_", " "), exc)

    def _beat(self) -> None:
        self.heartbeat.beat()

    def _idle_text(self) -> str:
        n = len(self.queue)
        current = self.worker.current
        if self.worker.busy and current:
            return f"job {current[0].job_id} running ({n} queued)"
        return f"idle, {n} queued"

    def _status(self, text: str) -> None:
        self.notifier.status(text)

    def _retention(self) -> None:
        w = self.worker
        self.observer.retention(lambda: [q.job for q in [*self.queue.items(), *w.current, *w.deferred]])

    def _write_queue(self) -> None:
        try:
            snap = queue_snapshot(
                self.settings,
                self.queue,
                self.worker,
                self.instance,
                self.observer.metrics.seconds_per_audio_second(),
            )
            info = self.engine.info
            model = (
                None
                if info is None
                else {
                    "name": info.name,
                    "device": info.device,
                    "dtype": info.dtype,
                    "decoder": info.backend,
                    "setup": info.setup.report() if info.setup is not None else None,
                }
            )
            state.write_queue(self.settings, snap, instance=self.instance, model=model)
        except OSError as exc:
            # queue.json only informs `dgx-music status`: a full or read-only disk must not
            # take the daemon (and the jobs it holds) down. Logged once per outage.
            if not self._queue_file_failing:
                log.warning(
                    "cannot update the queue file in %s (%s); `dgx-music status` may show an old queue",
                    self.settings.state_dir,
                    exc.strerror or exc,
                )
            self._queue_file_failing = True
        else:
            self._queue_file_failing = False

    def _handle_cancels(self) -> None:
        s = self.settings
        for job_id in state.pending_cancels(s):
            item = self.queue.remove(job_id) or self.worker.remove_deferred(job_id)
            if item is not None:
                with job_context(job_id=job_id, stage="cancel"):
                    state.clear_cancel(s, job_id)
                    fail_group_job(
                        s,
                        item.group,
                        job_id,
                        item.job,
                        ErrorType.CANCELLED,
                        "cancelled by request while queued",
                        hint=None,
                        status="cancelled",
                    )
                    finish_group_job(s, item.group, job_id, failed=True)
                self._write_queue()
            else:
                self.worker.cancel_running(job_id)  # the step callback sees it too

    def _do_reload(self) -> None:
        self.notifier.reloading(status="reloading configuration")
        log.info("SIGHUP: reloading %s", self.config_path or "(defaults + environment)")
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the old configuration: %s", exc)
            self.notifier.ready(status=self._idle_text())
            return
        if new.spool.resolve() != self.settings.spool.resolve():
            log.error(
                "reload refused: the spool changed (%s -> %s); restart the service to move the spool",
                self.settings.spool,
                new.spool,
            )
            self.notifier.ready(status=self._idle_text())
            return
        added = sorted(set(new.models) - set(self.settings.models))
        removed = sorted(set(self.settings.models) - set(new.models))
        from daemon.service.journal import setup_logging

        setup_logging(new.log_level)
        self.settings = new
        self.worker.update_settings(new)
        self.admission.settings = new
        self.engine.reconfigure(new)
        self.observer.reconfigure(new)
        if self.watcher is not None:
            self.watcher.scan_now()
        self.worker.retry_deferred_now()
        log.info("configuration reloaded (models added: %s; removed: %s)", added or "none", removed or "none")
        self.notifier.ready(status=self._idle_text())

    # ------------------------------------------------------------------ stop

    def _shutdown(self) -> None:
        s = self.settings
        self.notifier.stopping(status="stopping")
        self.heartbeat.beat(phase="stopping")
        log.info("stopping: no new jobs; the running job gets %.0f s to finish", s.stop_grace_s)
        if self.watcher is not None:
            self.watcher.stop()
        self.queue.close()
        self.worker.stop_event.set()
        t = self._worker_thread
        if t is not None:
            t.join(s.stop_grace_s)
            if t.is_alive():
                log.warning("grace period over: handing the running job back to the queue")
                self.worker.abort_event.set()
                self.worker.current_cancel.set()
                t.join(30)
        left = len(self.queue.drain()) + len(self.worker.deferred)
        if left:
            log.info("%d queued job(s) stay in work/ and run at the next start", left)
        state.remove_outcome_listener(self.observer.on_outcome)
        self.observer.close(self._gauges)
        self.engine.unload_model()
        # What we still hold in work/ is free for the peers now, not only after peer_timeout_s.
        self.heartbeat.stopped()
        log.info("stopped")
