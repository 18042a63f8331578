"""`dgx-music submit FILE... [--wait] [--timeout S]`: validate, drop atomically, optionally wait."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.commands._common import add_config_arg, settings_or_exit
from daemon.ops.client import (
    SubmitError,
    Submitted,
    WaitProgress,
    drop,
    reference_problems,
    serving_outlook,
    validate_file,
    wait_for,
)
from daemon.ops.progressbar import ProgressBar
from jobspec import JobSpecError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        help="validate job files and drop them into the inbox",
        description="Check each job file the way the daemon will (exit 2, nothing dropped, when one is "
        "invalid), then copy it into the spool's inbox atomically; a name that is taken gets -2, -3 ... "
        "With --wait, follow the jobs (queued, generating, writing) and print where each result is.",
    )
    p.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="a job file (YAML: one job, or `jobs:` for a batch); see `dgx-music examples`",
    )
    p.add_argument("--wait", action="store_true", help="wait for the results and print the sidecar paths")
    p.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="give up waiting after S seconds (exit 1)"
    )
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_or_exit(args)
    validated = []
    bad = False
    # Everything is validated before anything is dropped: a bad file leaves the spool untouched.
    for path in args.files:
        try:
            jobs = validate_file(settings, path)
            # The daemon would take the file and fail the job at run time: say so now.
            problems = reference_problems(settings, path, jobs)
            for d in problems:
                print(d.format(str(path)), file=sys.stderr)
            bad = bad or bool(problems)
            validated.append((path, jobs))
        except JobSpecError as exc:
            bad = True
            for d in exc.details:
                print(d.format(str(path)), file=sys.stderr)
        except OSError as exc:
            bad = True
            print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
    if bad:
        print("dgx-music: nothing submitted (fix the errors above)", file=sys.stderr)
        return 2
    subs: list[Submitted] = []
    try:
        for path, jobs in validated:
            sub = drop(settings, path, jobs)
            subs.append(sub)
            ids = ", ".join(j.id for j in sub.jobs)
            print(f"submitted {path} as {settings.inbox / sub.inbox_name} (jobs: {ids})")
    except SubmitError as exc:
        print(f"dgx-music: {exc}", file=sys.stderr)
        return 2
    outlook, daemon = serving_outlook(settings)
    where = f" on {daemon.get('host')}" if daemon and daemon.get("host") else ""
    if outlook == "loading":
        print(
            f"dgx-music: the daemon{where} is loading its model (started {daemon_started(daemon)}): "
            "the job waits in the inbox until it is ready",
            file=sys.stderr,
        )
    elif outlook == "stopping":
        print(
            f"dgx-music: warning: the daemon{where} serving {settings.spool} is stopping: the job waits in "
            "the inbox until a daemon starts again (systemctl start dgx-music)",
            file=sys.stderr,
        )
    elif outlook == "none":
        print(
            f"dgx-music: warning: no daemon is serving {settings.spool} (no live state/queue*.json): "
            "the job waits in the inbox until one starts (systemctl start dgx-music)",
            file=sys.stderr,
        )
    if not args.wait:
        return 0
    bar = ProgressBar("waiting")

    def tick(p: WaitProgress) -> None:
        bar.update(
            p.fraction,
            f"{p.done}/{p.total} done" + (f", {p.note}" if p.note else ""),
            eta_s=p.eta_s,
            status=p.state,
        )

    results = wait_for(settings, subs, timeout_s=args.timeout, on_tick=tick)
    bar.close()
    total = sum(len(s.jobs) for s in subs)
    failed = 0
    for _key, (path, body) in sorted(results.items()):
        status = body.get("status")
        if status != "completed":
            failed += 1
            err = body.get("error") or {}
            print(f"{status}: {path} ({err.get('type')}: {err.get('message')})")
        else:
            print(f"completed: {path}")
    if len(results) < total:
        print(
            f"dgx-music: timed out: {total - len(results)} of {total} job(s) not finished yet",
            file=sys.stderr,
        )
        return 1
    return 1 if failed else 0


def daemon_started(daemon: dict[str, Any] | None) -> str:
    """`started` of a daemon's heartbeat as the local time of day."""
    started = str((daemon or {}).get("started") or "")
    try:
        return datetime.fromisoformat(started.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return started or "just now"
