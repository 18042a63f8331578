"""`dgx-music serve`: read the configuration, set up logging, run the daemon; the exit codes."""

from __future__ import annotations

import faulthandler
import logging
from pathlib import Path

from daemon import spool
from daemon.core.config import ConfigError, load_settings
from daemon.core.errors import ExitCode
from daemon.service.allocator import settle_malloc
from daemon.service.daemon import Daemon
from daemon.service.journal import setup_logging

log = logging.getLogger("daemon.service.daemon")
EXIT_CONFIG = ExitCode.CONFIG


def serve(config_path: Path | None) -> int:
    # A watchdog kill (SIGABRT) then prints every thread's stack to the journal.
    faulthandler.enable()
    malloc = settle_malloc()  # before the model's weights and the first job's blocks

    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        setup_logging("INFO")
        log.critical("%s", exc)
        return EXIT_CONFIG
    setup_logging(settings.log_level)
    log.info("malloc: %s", malloc)
    try:
        return Daemon(settings, config_path=config_path).run()
    except spool.SpoolError as exc:
        log.critical("%s", exc)
        return EXIT_CONFIG
