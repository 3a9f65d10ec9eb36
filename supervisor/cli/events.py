"""``trainwarden events``: the append-only record of what happened, and ``--explain ID``."""

from __future__ import annotations

import argparse
from typing import Any

from trainwarden.policies import hostlist
from trainwarden.supervisor.api.client import add_api_arguments, client_for
from trainwarden.supervisor.api.contract import EventRow
from trainwarden.supervisor.cli.render import (
    console,
    events_table,
    print_json,
    render_explanation,
)
from trainwarden.supervisor.errors import SupervisorError

MAX_NODES = 64  # --node with a hostlist: one request each


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "events",
        help="list recorded events (newest last)",
        description="List recorded events, filtered by node, run or kind; or explain one.",
    )
    parser.add_argument(
        "--node",
        default=None,
        metavar="HOSTLIST",
        help="only events about this node, or these: a Slurm hostlist (nid[000010-000012]; "
        f"one request per node, at most {MAX_NODES})",
    )
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
    nodes = _nodes(args.node)
    if len(nodes) <= 1:
        rows = client.events(
            limit=args.limit,
            node=nodes[0] if nodes else None,
            run=args.run,
            kind=args.kind,
            since_id=args.since_id,
        )
    else:  # the API filters by one node: ask per node, keep the newest `limit` of them all
        seen: dict[int, EventRow] = {}
        for node in nodes:
            for row in client.events(
                limit=args.limit, node=node, run=args.run, kind=args.kind, since_id=args.since_id
            ):
                seen[row.id] = row
        rows = sorted(seen.values(), key=lambda r: r.id)[-args.limit :]
    if args.json:
        print_json(rows)
        return 0
    out = console()
    if not rows:
        out.print("no events")
        return 0
    out.print(events_table(sorted(rows, key=lambda r: r.id)))
    return 0


def _nodes(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    try:
        names = hostlist.expand(text)
    except ValueError as exc:
        raise SupervisorError(f"--node: {exc}") from None
    if not names:
        raise SupervisorError("--node: no node named")
    if len(names) > MAX_NODES:
        raise SupervisorError(
            f"--node {text!r} names {len(names)} nodes; at most {MAX_NODES} at once "
            "(each is one request): narrow it, or filter by --run or --kind"
        )
    return names
