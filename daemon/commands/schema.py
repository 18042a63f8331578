"""`dgx-music schema`: the JSON Schema of job files (`--result`: of the result sidecars)."""

from __future__ import annotations

import argparse
import sys

from jobspec.schema import job_file_schema, render, result_schema


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of job files (or of result sidecars)",
        description="Print the JSON Schema of job files, for editors and CI. "
        "`--result` prints the schema of outbox/<id>.json and failed/<id>.error.json instead.",
    )
    parser.add_argument("--result", action="store_true", help="the result and error sidecars' schema")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(render(result_schema() if args.result else job_file_schema()))
    return 0
