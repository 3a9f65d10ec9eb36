"""``trainwarden events``: the append-only record of what happened, ``--follow`` to watch it
grow, and ``--explain ID``: what an event is and the actions it led to."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from trainwarden.policies import hostlist
from trainwarden.supervisor.api.client import OperatorClient, add_api_arguments, client_for
from trainwarden.supervisor.api.contract import EventRow
from trainwarden.supervisor.cli.render import (
    EVENT_HEADER,
    console,
    event_line,
    events_table,
    in_order,
    print_json,
    print_json_line,
    render_explanation,
)
from trainwarden.supervisor.errors import SupervisorError

MAX_NODES = 64  # --node with a hostlist: one request each
POLL_S = 1.0  # --follow: how often the daemon is asked for new events
FOLLOW_BATCH = 500  # --follow: events read per request, forward from the last one seen


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "events",
        help="list recorded events (newest last)",
        description="List recorded events, oldest first, filtered by node, run or kind; "
        "follow new ones as they are recorded; or explain one.",
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
    parser.add_argument(
        "--limit", type=int, default=50, help="the newest this many (default 50), oldest first"
    )
    parser.add_argument(
        "--since-id",
        type=int,
        default=None,
        metavar="ID",
        help="only events with an id greater than ID",
    )
    parser.add_argument(
        "--reverse", action="store_true", help="newest first (tables and JSON alike)"
    )
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then print new events as they are recorded, until Ctrl-C (with --json: one "
        "JSON object per line)",
    )
    parser.add_argument(
        "--explain",
        type=int,
        default=None,
        metavar="ID",
        help="explain event ID: what it is and the actions it led to",
    )
    parser.add_argument("--json", action="store_true", help="print JSON rows for scripts")
    add_api_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    client = client_for(args)
    if args.explain is not None:
        if args.follow:
            raise SupervisorError("--explain shows one event; it cannot --follow")
        explanation = client.explain(args.explain, "event")
        if args.json:
            print_json(explanation)
        else:
            render_explanation(console(), explanation)
        return 0
    nodes = _nodes(args.node)
    if args.follow:
        if args.reverse:
            raise SupervisorError("--follow prints events as they come, oldest first: no --reverse")
        return _follow(client, args, nodes)
    rows = in_order(_newest(client, args, nodes), reverse=args.reverse)
    if args.json:
        print_json(rows)
        return 0
    out = console()
    if not rows:
        out.print("no events")
        return 0
    out.print(events_table(rows))
    return 0


def _newest(
    client: OperatorClient, args: argparse.Namespace, nodes: tuple[str, ...]
) -> list[EventRow]:
    """The newest ``--limit`` events that match (in no particular order)."""
    if len(nodes) <= 1:
        return client.events(
            limit=args.limit,
            node=nodes[0] if nodes else None,
            run=args.run,
            kind=args.kind,
            since_id=args.since_id,
        )
    # the API filters by one node: ask per node, keep the newest `limit` of them all
    seen: dict[int, EventRow] = {}
    for node in nodes:
        for row in client.events(
            limit=args.limit, node=node, run=args.run, kind=args.kind, since_id=args.since_id
        ):
            seen[row.id] = row
    return sorted(seen.values(), key=lambda r: r.id)[-args.limit :]


def _wait(seconds: float) -> None:
    """Between two polls (a seam for the tests)."""
    time.sleep(seconds)


def _follow(client: OperatorClient, args: argparse.Namespace, nodes: tuple[str, ...]) -> int:
    """Print what matches now (the newest ``--limit``; with ``--since-id``, everything after
    it), then every new event once, in id order, until Ctrl-C ends it (exit 0). The daemon
    is read forward from the last id seen, so a burst between two polls loses nothing."""
    emit: Callable[[EventRow], None]
    if args.json:
        emit = print_json_line
    else:
        out = console()

        def emit(row: EventRow) -> None:
            out.print(event_line(row), markup=False, highlight=False, soft_wrap=True)

    wanted = frozenset(nodes)
    # one node: the daemon filters; several: read them all forward, keep those of `nodes`
    node_filter = nodes[0] if len(nodes) == 1 else None
    try:
        if not args.json:
            out.print(EVENT_HEADER, markup=False, highlight=False, soft_wrap=True)
        if args.since_id is not None:
            cursor = args.since_id
        else:
            newest = client.events(limit=1)  # where the record ends now, before any filter
            cursor = newest[0].id if newest else 0
            for row in in_order(_newest(client, args, nodes)):
                emit(row)
                cursor = max(cursor, row.id)
        while True:
            while True:  # read forward until caught up
                batch = client.events_after(
                    cursor, limit=FOLLOW_BATCH, node=node_filter, run=args.run, kind=args.kind
                )
                for row in in_order(batch):
                    if len(wanted) <= 1 or row.node in wanted:
                        emit(row)
                    cursor = max(cursor, row.id)
                if len(batch) < FOLLOW_BATCH:
                    break
            _wait(POLL_S)
    except KeyboardInterrupt:  # Ctrl-C is how following ends: not an error
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
