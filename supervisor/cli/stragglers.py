"""``trainwarden stragglers analyze TRACE.csv``: offline straggler analysis of a recorded trace.

It replays the trace through the daemon's own detector, so what it prints is what the
daemon would have flagged, from which step, with which score.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from trainwarden.supervisor.detectors.stragglers.offline import analyze_rows
from trainwarden.supervisor.detectors.stragglers.traces import load_trace


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("stragglers", help="straggler analysis")
    sub = parser.add_subparsers(dest="stragglers_command", metavar="ACTION")
    sub.required = True
    analyze = sub.add_parser(
        "analyze",
        help="flag straggling ranks and nodes in a per-step, per-rank CSV trace",
        description="Columns: step,rank,node,compute_s; optional step_s, group (ranks doing "
        "the same work, e.g. one pipeline stage: the only fair peers), ts.",
    )
    analyze.add_argument("trace", help="CSV file, one line per rank per step")
    analyze.add_argument("--json", action="store_true", help="print one JSON object")
    analyze.set_defaults(func=run_analyze)


def run_analyze(args: argparse.Namespace) -> int:
    result = analyze_rows(load_trace(args.trace)).as_dict()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{result['steps']} steps, {result['ranks']} ranks on {result['nodes']} nodes, "
        f"{result['groups']} peer group(s)"
    )
    if not result["flagged"]:
        print("no straggler flagged")
    for f in result["flagged"]:
        what = f"node {f['node']}" if f["rank"] is None else f"rank {f['rank']} ({f['node']})"
        at = f["cleared_at_step"]
        cleared = "" if at is None else f", cleared at step {at}"
        print(
            f"FLAGGED {what}: from step {f['from_step']}, {f['score']:.2f}x its peers "
            f"(z={f['z']:.1f}, {f['window']} window){cleared}"
        )
    for imb in result["stage_imbalance"]:
        groups = ", ".join(f"{g} {v:.4g}s" for g, v in imb["groups"].items())
        print(
            f"STAGE IMBALANCE (partitioning, not a bad node): {imb['slowest_group']} is "
            f"{imb['ratio']:.2f}x the fastest group; typical times: {groups}"
        )
    job = result["job_slowdown"]
    if job is not None and job["active"]:
        print(f"RUN SLOWDOWN: step time {job['ratio']:.2f}x its own baseline")
    return 0
