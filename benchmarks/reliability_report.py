"""Run the reliability suite against the real daemon and print its figures as a table.

    .venv/bin/python benchmarks/reliability_report.py            # CI sizes (about 5 minutes on 2 cores)
    .venv/bin/python benchmarks/reliability_report.py --full     # the issue's sizes (1,000-job floods)
    .venv/bin/python benchmarks/reliability_report.py --json F   # print the table of an earlier run

The tests (tests/reliability/, tests/service/test_service_notify.py) write their figures to the JSON file
named by DGX_MUSIC_RELIABILITY_REPORT; this script sets it, runs pytest, and turns the file into
the Markdown table of docs/reliability.md. A failing test makes the exit code non-zero and the
table says so: "lost 0" is only printed from a run where every check held.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUITE = ["tests/reliability", "tests/service/test_service_notify.py"]
# The attacks of tests/reliability/test_rel_spool_escape.py, by the name each records when it held.
SPOOL_ATTACKS = (
    "inbox_folder_swapped_for_link",
    "cancel_in_linked_folder",
    "reference_bomb",
    "reference_bomb_lying_header",
    "inbox_folder_named_like_page",
    "retention_sidecar_names_other_job",
    "same_id_in_two_folders",
)


def run_suite(report: Path, *, full: bool) -> tuple[int, float]:
    env = dict(os.environ, DGX_MUSIC_RELIABILITY_REPORT=str(report))
    if full:
        env["DGX_MUSIC_RELIABILITY_FULL"] = "1"
    t0 = time.monotonic()
    rc = subprocess.call(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITE], cwd=ROOT, env=env
    )
    return rc, time.monotonic() - t0


def _get(data: dict[str, Any], scenario: str, key: str, default: Any = None) -> Any:
    return data.get(scenario, {}).get(key, default)


def table(data: dict[str, Any], *, wall_s: float | None, ok: bool | None) -> str:
    chaos, flood, shared = data.get("crash_chaos", {}), data.get("flood", {}), data.get("flood_shared", {})
    hostile, disk = data.get("hostile", {}), data.get("full_disk", {})
    escape = data.get("spool_escape", {})
    jobs = (
        chaos.get("jobs", 0)
        + flood.get("jobs", 0)
        + flood.get("jobs_dropped_while_down", 0)
        + shared.get("jobs", 0)
        + disk.get("jobs", 0)
    )
    lost = chaos.get("lost", 0) + disk.get("lost", 0)
    moments = ", ".join(f"{k} {v}" for k, v in sorted(chaos.get("kill_moments", {}).items()))
    faults = [
        k.removeprefix("model_fault_")
        for k in sorted(data)
        if k.startswith("model_fault_") and k != "model_fault_oom"
    ]
    rows = [
        (
            "Jobs through the real daemon",
            f"{jobs} (chaos {chaos.get('jobs', 0)}, flood {flood.get('jobs', 0)} + "
            f"{flood.get('jobs_dropped_while_down', 0)} dropped while down, "
            f"two daemons {shared.get('jobs', 0)}, "
            f"full disk {disk.get('jobs', 0)})",
        ),
        ("SIGKILLs", f"{chaos.get('kills', 0)} ({moments})"),
        ("Restarts", str(chaos.get("restarts", 0))),
        ("Lost", str(lost)),
        ("Duplicated", str(chaos.get("duplicated", 0))),
        ("Failed as `crashed` (killed max_attempts times)", str(chaos.get("failed_crashed", 0))),
        (
            "Hostile inputs tried / held",
            f"{hostile.get('inputs_tried', 0)} / {hostile.get('held', 0)} "
            f"({hostile.get('corpus_cases', 0)} corpus cases)",
        ),
        (
            "Flood memory growth (RSS after 50 jobs -> end)",
            f"{flood.get('rss_growth_pct', 'n/a')} % "
            f"({flood.get('rss_after_50_kb', '?')} -> {flood.get('rss_end_kb', '?')} kB)",
        ),
        (
            "Flood open fds (after 50 -> end, peak)",
            f"{flood.get('fds_after_50', '?')} -> {flood.get('fds_end', '?')}, "
            f"peak {flood.get('fds_peak', '?')}",
        ),
        (
            "Flood throughput",
            f"{flood.get('jobs_per_s', '?')} jobs/s (one daemon); two daemons split "
            f"{shared.get('daemon_a', '?')} / {shared.get('daemon_b', '?')}",
        ),
        (
            "Full disk",
            f"{disk.get('jobs', 0)} jobs held in inbox/work, "
            f"all done {disk.get('completed_after_space_freed_s', '?')} s "
            "after space was freed",
        ),
        (
            "Model faults",
            f"{', '.join(faults) or 'n/a'} checkpoint -> ModelLoadError, serve exits "
            f"{_get(data, 'model_fault_corrupt', 'serve_exit', '?')}; CUDA OOM once -> batch split "
            f"{_get(data, 'model_fault_oom', 'split', '?')}, job completed",
        ),
        (
            "Spool-edge attacks held (docs/reliability.md)",
            f"{sum(1 for v in escape.values() if v == 'held')} / {len(SPOOL_ATTACKS)}",
        ),
        (
            "Reference bomb: peak RSS rise (VmHWM)",
            f"{escape.get('bomb_hwm_rise_mib', '?')} MiB, lying header "
            f"{escape.get('liar_hwm_rise_mib', '?')} MiB (bound {escape.get('hwm_bound_mib', '?')} MiB; "
            f"{escape.get('bomb_file_kib', '?')} KiB file, 880 MiB decoded)",
        ),
        ("Start to READY=1 (tiny model, CPU)", f"{_get(data, 'service', 'start_to_ready_s', '?')} s"),
    ]
    if wall_s is not None:
        rows.append(("Wall time of the suite", f"{wall_s:.0f} s"))
    if ok is not None:
        rows.append(("Every check held", "yes" if ok else "NO (see the pytest output)"))
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'Figure'.ljust(width)} | Value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--full", action="store_true", help="the issue's full sizes (DGX_MUSIC_RELIABILITY_FULL=1)"
    )
    ap.add_argument("--json", type=Path, help="print the table of an earlier run's JSON instead of running")
    ap.add_argument("--out", type=Path, help="keep the run's JSON here")
    args = ap.parse_args(argv)
    if args.json:
        print(table(json.loads(args.json.read_text()), wall_s=None, ok=None))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        report = args.out or Path(tmp) / "reliability.json"
        report.unlink(missing_ok=True)
        rc, wall = run_suite(report, full=args.full)
        data = json.loads(report.read_text()) if report.exists() else {}
    print()
    print(table(data, wall_s=wall, ok=rc == 0))
    return rc


if __name__ == "__main__":
    sys.exit(main())
