"""`dgx-music serve`: run the daemon (what the systemd unit starts)."""

from __future__ import annotations

import argparse

from daemon.commands._common import add_config_arg, config_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the spool daemon (foreground; systemd Type=notify aware)",
        description="Run the daemon in the foreground: load the default model, watch the inbox and "
        "write results to the outbox until SIGTERM or SIGINT (the running job gets its grace period). "
        "Under systemd (Type=notify) it reports READY=1 once the model is loaded and STATUS= lines as it "
        "works; SIGHUP reloads the config. This is what the dgx-music service unit runs.",
    )
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from daemon.service.main import serve  # imports torch: only for this command

    return serve(config_path(args))
