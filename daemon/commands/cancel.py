"""`dgx-music cancel ID`: cancel a job waiting in the inbox, queued or running (its outcome is an
error sidecar `cancelled`; a job still in inbox/ moves to failed/ with its bytes kept)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from daemon.commands._common import add_config_arg, settings_or_exit
from daemon.core.config import Settings
from daemon.ops.client import live_running, serving_daemons
from daemon.spool import state
from daemon.spool.reserve import result_folders
from daemon.spool.withdraw import find_in_inbox, withdraw


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cancel",
        help="cancel a job by id (waiting in the inbox, queued or running)",
        description="Cancel one job. A job still waiting in the inbox is moved to failed/ (your bytes "
        "kept) with a `cancelled` error sidecar; a queued or running job is cancelled by the daemon "
        "holding it, which confirms within --timeout. A job that has already finished is left alone: "
        "cancel says how it ended and where its result is.",
    )
    p.add_argument(
        "job_id",
        metavar="ID",
        help="the job's id: its `id:` field, else the job file's name without .yaml "
        "(a batch's jobs are <name>.1, <name>.2 ...); `submit` and `status` print it",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="wait this long for the daemon to confirm"
    )
    add_config_arg(p)
    p.set_defaults(func=run)


def _known(settings, job_id: str) -> bool:
    # Jobs decoded together share one running entry: the first job's id plus `batch`.
    if any(r.get("job_id") == job_id or job_id in (r.get("batch") or []) for r in live_running(settings)):
        return True
    return any(e.get("job_id") == job_id for q in serving_daemons(settings) for e in q.get("queued", []))


def _finished(settings: Settings, job_id: str) -> str | None:
    """How `job_id` ended and where its result is, from its sidecar; None when it has none."""
    for root, name in ((settings.outbox, f"{job_id}.json"), (settings.failed, f"{job_id}.error.json")):
        for _folder, directory in result_folders(root):
            path = directory / name
            try:
                body = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            status = str(body.get("status") or "finished")
            if status == "completed":
                return f"has already completed: its result is {path}"
            error = body.get("error") or {}
            why = f" ({error.get('type')}: {error.get('message')})" if status == "failed" else ""
            return f"has already {'been cancelled' if status == 'cancelled' else status}{why}: see {path}"
    return None


def run(args: argparse.Namespace) -> int:
    settings = settings_or_exit(args)
    job_id = args.job_id
    try:
        state.check_job_id(job_id)  # before it names any file
        finished = _finished(settings, job_id)
        # A sidecar is the last word: a batch's running entry names all its jobs until the last
        # of them is published, one by one.
        if finished is not None or not _known(settings, job_id):
            waiting = find_in_inbox(settings, job_id)
            if waiting is None and finished is not None:
                print(f"dgx-music: nothing to cancel: job {job_id!r} {finished}", file=sys.stderr)
                return 2
            if waiting is None:
                print(
                    f"dgx-music: no queued or running job {job_id!r}, and none waiting in the inbox "
                    "(see `dgx-music status`)",
                    file=sys.stderr,
                )
                return 2
            try:
                err = withdraw(settings, waiting, job_id)
            except PermissionError:
                err = None  # failed/ is the daemon's: it cancels the file when it picks it up
                print(
                    f"cannot move {waiting.name} to failed/ myself; asking the daemon to cancel it at pickup"
                )
            else:
                if err is not None:
                    print(f"cancelled: {err} (the job file is kept beside it, untouched)")
                    return 0
        state.request_cancel(settings, job_id)
    except state.InvalidJobIdError as exc:
        print(f"dgx-music: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"dgx-music: cannot write the cancel request: {exc}", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        # failed/<id>.error.json, or failed/<folder>/<id>.error.json for a job from an inbox subfolder
        candidates = [d / f"{job_id}.error.json" for _, d in result_folders(settings.failed)]
        sidecar = next((p for p in candidates if p.exists()), None)
        if sidecar is not None:
            print(f"cancelled: {sidecar}")
            return 0
        time.sleep(0.1)
    print(f"cancel requested for {job_id}; the daemon has not confirmed yet (see `dgx-music status`)")
    return 0
