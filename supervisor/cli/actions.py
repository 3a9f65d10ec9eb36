"""``trainwarden actions`` / ``approve`` / ``reject`` / ``incidents``: what was done or
proposed, by whom, and what automation stopped for.

In approve mode, rules queue their actions; an operator approves or rejects each one here.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape

from trainwarden.supervisor.api.client import add_api_arguments, client_for
from trainwarden.supervisor.cli.render import (
    actions_table,
    console,
    fmt_time,
    in_order,
    print_json,
    render_explanation,
    report_action,
    table,
)
from trainwarden.supervisor.errors import SupervisorError

STATUSES = ("pending", "running", "succeeded", "failed", "approved", "rejected", "skipped")


def register(subparsers: Any) -> None:
    actions: argparse.ArgumentParser = subparsers.add_parser(
        "actions",
        help="list recorded actions (newest last)",
        description="List actions taken or proposed by rules and operators; or explain one.",
    )
    actions.add_argument(
        "--status",
        choices=STATUSES,
        default=None,
        help="only actions with this status (pending: awaiting approval)",
    )
    actions.add_argument(
        "--limit", type=int, default=50, help="the newest this many (default 50), oldest first"
    )
    actions.add_argument(
        "--reverse", action="store_true", help="newest first (tables and JSON alike)"
    )
    actions.add_argument(
        "--explain",
        type=int,
        default=None,
        metavar="ID",
        help="explain action ID: why, on which evidence, with what result",
    )
    actions.add_argument("--json", action="store_true", help="print JSON rows for scripts")
    add_api_arguments(actions)
    actions.set_defaults(func=run_actions)

    incidents: argparse.ArgumentParser = subparsers.add_parser(
        "incidents",
        help="list incidents: what automation stopped for",
        description="Incidents: crash loops, spent restart budgets, lemon nodes, correlated "
        "failures and mass silences; open ones hold automatic actions.",
    )
    incidents.add_argument("--open", action="store_true", help="only the open ones")
    incidents.add_argument(
        "--close",
        metavar="ID",
        default=None,
        help="close open incident ID (a crash loop's run may be restarted again, a lemon "
        "returned); needs --reason",
    )
    incidents.add_argument("--reason", default=None, help="why it is closed (recorded)")
    incidents.add_argument("--json", action="store_true", help="print JSON rows for scripts")
    add_api_arguments(incidents)
    incidents.set_defaults(func=run_incidents)

    approve: argparse.ArgumentParser = subparsers.add_parser(
        "approve", help="approve a queued action", description="Approve queued action ID."
    )
    approve.add_argument("id", type=int, metavar="ID")
    approve.add_argument("--json", action="store_true", help="print the action as JSON")
    add_api_arguments(approve)
    approve.set_defaults(func=run_approve)

    reject: argparse.ArgumentParser = subparsers.add_parser(
        "reject", help="reject a queued action", description="Reject queued action ID."
    )
    reject.add_argument("id", type=int, metavar="ID")
    reject.add_argument("--reason", required=True, help="why it must not be carried out")
    reject.add_argument("--json", action="store_true", help="print the action as JSON")
    add_api_arguments(reject)
    reject.set_defaults(func=run_reject)


def run_actions(args: argparse.Namespace) -> int:
    client = client_for(args)
    if args.explain is not None:
        explanation = client.explain(args.explain, "action")
        if args.json:
            print_json(explanation)
        else:
            render_explanation(console(), explanation)
        return 0
    rows = in_order(client.actions(status=args.status, limit=args.limit), reverse=args.reverse)
    if args.json:
        print_json(rows)
        return 0
    out = console()
    if not rows:
        out.print("no actions" + (f" with status {args.status}" if args.status else ""))
        return 0
    out.print(actions_table(rows))
    return 0


def run_incidents(args: argparse.Namespace) -> int:
    if args.close is not None:
        if not args.reason:
            raise SupervisorError("--close needs --reason: why the incident is over")
        row = client_for(args).close_incident(args.close, args.reason)
        if args.json:
            print_json(row)
        else:
            console().print(f"incident {escape(row.id)} ({row.kind} {escape(row.subject)}) closed")
        return 0
    # oldest first, tables and JSON alike (the API sends the newest first)
    rows = sorted(client_for(args).incidents(open_only=args.open), key=lambda r: r.opened_at)
    if args.json:
        print_json(rows)
        return 0
    out = console()
    if not rows:
        out.print("no open incidents" if args.open else "no incidents")
        return 0
    listing = table("ID", "OPENED", "KIND", "SUBJECT", "STATE", "NODES", "DETAIL")
    for r in rows:
        state = "[bold red]open[/]" if r.open else f"cleared {fmt_time(r.cleared_at or 0.0)}"
        listing.add_row(
            r.id,
            fmt_time(r.opened_at),
            r.kind,
            escape(r.subject),
            state,
            f"{r.node_count} {escape(r.nodes)}".strip() if r.node_count else "",
            escape(r.detail),
        )
    out.print(listing)
    return 0


def run_approve(args: argparse.Namespace) -> int:
    row = client_for(args).approve(args.id)
    return report_action(row, as_json=args.json)


def run_reject(args: argparse.Namespace) -> int:
    row = client_for(args).reject(args.id, args.reason)
    return report_action(row, as_json=args.json)
