"""``trainwarden events``: the append-only record of what happened, and ``--explain ID``."""

from __future__ import annotations

import argparse
from typing import Any

from trainwarden.supervisor.api.client import add_api_arguments, client_for
from trainwarden.supervisor.cli.render import (
    console,
    events_table,
    print_json,
    render_explanation,
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "events",
        help="list recorded events (newest last)",
        description="List recorded events, filtered by node, run or kind; or explain one.",
    )
    parser.add_argument("--node", default=None, help="only events about this node")
    parser.add_argument("--run", default=None, help="only events about this run")
    parser.add_argument("--kind", default=None, help="only events of this kind (e.g. fault)")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.add_argument(
        "--since-id",
        type=int,
        default=None,
        metavar="ID",
        help="only events with an id greater than ID",
    )
    parser.add_argument(
        "--explain",
        type=int,
        default=None,
        metavar="ID",
        help="explain event ID: what it is and what it led to",
    )
    parser.add_argument("--json", action="store_true", help="print JSON rows for scripts")
    add_api_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    client = client_for(args)
    if args.explain is not None:
        explanation = client.explain(args.explain, "event")
        if args.json:
            print_json(explanation)
        else:
            render_explanation(console(), explanation)
        return 0
    rows = client.events(
        limit=args.limit, node=args.node, run=args.run, kind=args.kind, since_id=args.since_id
    )
    if args.json:
        print_json(rows)
        return 0
    out = console()
    if not rows:
        out.print("no events")
        return 0
    out.print(events_table(sorted(rows, key=lambda r: r.id)))
    return 0
