"""``trainwarden events``: the append-only record of what happened, and ``--explain ID``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from trainwarden.supervisor.api.client import add_api_arguments

if TYPE_CHECKING:
    from rich.console import Console

    from trainwarden.supervisor.api.contract import EventRow, Explanation


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
    from trainwarden.supervisor.api.client import client_for, console, print_json

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


def events_table(rows: list[EventRow]) -> Any:
    """A rich table of events, in the order given."""
    from rich.markup import escape
    from rich.table import Table

    from trainwarden.supervisor.api.client import fmt_time

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "TIME", "KIND", "NODE", "RUN", "MESSAGE"):
        table.add_column(column, justify="right" if column == "ID" else "left")
    for r in rows:
        table.add_row(
            str(r.id), fmt_time(r.ts), r.kind, r.node or "-", r.run or "-", escape(r.message)
        )
    return table


def render_explanation(out: Console, explanation: Explanation) -> None:
    """Print an explanation: its lines (or, without any, the action's summary) and evidence."""
    from trainwarden.supervisor.cli.actions import action_summary

    out.print(f"[bold]{explanation.subject}[/]")
    for line in explanation.lines:
        out.print(f"  {line}", markup=False)
    if explanation.action is not None and not explanation.lines:
        out.print()
        out.print("[bold]record[/]")
        for line in action_summary(explanation.action):
            out.print(f"  {line}", markup=False)
    if explanation.events:
        out.print()
        out.print("[bold]evidence[/]")
        out.print(events_table(explanation.events))
