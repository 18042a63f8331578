"""`dgx-music status [--json]`: the queue by state, running jobs with percent and ETA, recent results."""

from __future__ import annotations

import argparse
import json
import sys

from daemon.commands._common import add_config_arg, settings_or_exit
from daemon.core.errors import ExitCode
from daemon.core.eta import format_eta
from daemon.core.messages import setup_summary
from daemon.ops.client import status_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="show the spool: queued, running, recent results",
        description="Show the spool as the daemons see it: the daemons serving it, the running job "
        "with its percentage and ETA, the queue in order with each job's ETA, the count of files in "
        "each folder and the latest outcomes. Reads state/ only; needs no running daemon.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_or_exit(args)
    if not settings.spool.is_dir():
        # Zeros would read as "an empty, healthy spool": say what is wrong instead.
        where = "is not a directory" if settings.spool.exists() else "does not exist"
        print(
            f"dgx-music status: spool {settings.spool} {where} (set spool: in the config, "
            "or pass --config; the daemon creates it at its first start)",
            file=sys.stderr,
        )
        return int(ExitCode.USAGE)
    report = status_report(settings)
    # Files of a daemon elsewhere whose heartbeat went stale describe nothing that still runs.
    gone = {(d["host"], d["pid"]) for d in report["daemons"] if d["state"] != "live"}
    report["running"] = [r for r in report["running"] if (r.get("host"), r.get("pid")) not in gone]
    report["queued"] = [q for q in report["queued"] if (q.get("host"), q.get("pid")) not in gone]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    c = {k: ("?" if v < 0 else v) for k, v in report["counts"].items()}  # "?": not readable by this user
    print(
        f"spool {report['spool']}: inbox {c['inbox']}, work {c['work']}, "
        f"outbox {c['outbox']} results, failed {c['failed']}"
    )
    # Every serving daemon keeps a queue file (empty when idle).
    if not report["queued"]:
        print("no daemon is serving this spool")
    busy = {(r.get("host"), r.get("pid")) for r in report["running"]}
    for d in report["daemons"]:
        slurm = f", slurm job {d['slurm_array'] or d['slurm_job_id']}" if d.get("slurm_job_id") else ""
        print(
            f"host     {d['host']} pid {d['pid']}{slurm}: {d['state']}, "
            f"heartbeat {d['heartbeat_age_s']:.0f} s ago"
        )
    for q in report["queued"]:
        n = len(q.get("queued", []))
        what = "running a job" if (q.get("host"), q.get("pid")) in busy else "idle"
        m = q.get("model") or {}
        decoder = setup_summary(m["setup"]) if m.get("setup") else m.get("decoder")
        resident = (
            f", model {m.get('name')} on {m.get('device')}/{m.get('dtype')}, decoder {decoder}" if m else ""
        )
        print(f"daemon   pid {q.get('pid')} on {q.get('host')}: {what}, {n} queued{resident}")
    for r in report["running"]:
        eta = r.get("eta_s")
        eta_text = f", {format_eta(eta)}" if isinstance(eta, (int, float)) else ""
        print(
            f"running  {r.get('job_id')}  {float(r.get('percent') or 0):5.1f}%{eta_text}  "
            f"(pid {r.get('pid')} on {r.get('host')})"
        )
        for mate in (r.get("batch") or [])[1:]:
            print(f"running  {mate}  (decoded in one batch with {r.get('job_id')})")
    for q in report["queued"]:
        for e in q.get("queued", []):
            eta = e.get("eta_s")
            eta_text = f"  {format_eta(eta)}" if isinstance(eta, (int, float)) else ""
            print(f"queued   {e['job_id']}  #{e['position']} {e['priority']}{eta_text}  (pid {q.get('pid')})")
    if report["recent"]:
        print("recent:")
        for e in reversed(report["recent"]):
            extra = f" ({e['error']})" if e.get("error") else ""
            print(f"  {e.get('status', '?'):9s} {e.get('job_id')}{extra}  {e.get('path', '')}")
    return 0
