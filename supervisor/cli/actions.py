"""``trainwarden actions`` / ``approve`` / ``reject``: what was done or proposed, and by whom.

In approve mode, rules queue their actions; an operator approves or rejects each one here.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from trainwarden.supervisor.api.client import add_api_arguments

if TYPE_CHECKING:
    from trainwarden.supervisor.api.contract import ActionRow

STATUSES = ("pending", "running", "succeeded", "failed", "approved", "rejected", "skipped")
STATUS_STYLE = {
    "succeeded": "green",
    "failed": "bold red",
    "pending": "yellow",
    "rejected": "red",
    "skipped": "dim",
    "approved": "cyan",
    "running": "magenta",
}


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
    actions.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
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

    approve: argparse.ArgumentParser = subparsers.add_parser(
        "approve", help="approve a queued action", description="Approve queued action ID."
    )
    approve.add_argument("id", type=int, metavar="ID")
    approve.add_argument("--who", default=None, help="operator name (default: $SUDO_USER or $USER)")
    approve.add_argument("--json", action="store_true", help="print the action as JSON")
    add_api_arguments(approve)
    approve.set_defaults(func=run_approve)

    reject: argparse.ArgumentParser = subparsers.add_parser(
        "reject", help="reject a queued action", description="Reject queued action ID."
    )
    reject.add_argument("id", type=int, metavar="ID")
    reject.add_argument("--reason", required=True, help="why it must not be carried out")
    reject.add_argument("--who", default=None, help="operator name (default: $SUDO_USER or $USER)")
    reject.add_argument("--json", action="store_true", help="print the action as JSON")
    add_api_arguments(reject)
    reject.set_defaults(func=run_reject)


def run_actions(args: argparse.Namespace) -> int:
    from rich.table import Table

    from trainwarden.supervisor.api.client import client_for, console, fmt_time, print_json
    from trainwarden.supervisor.cli.events import render_explanation

    client = client_for(args)
    if args.explain is not None:
        explanation = client.explain(args.explain, "action")
        if args.json:
            print_json(explanation)
        else:
            render_explanation(console(), explanation)
        return 0
    rows = client.actions(status=args.status, limit=args.limit)
    if args.json:
        print_json(rows)
        return 0
    out = console()
    if not rows:
        out.print("no actions" + (f" with status {args.status}" if args.status else ""))
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "TIME", "KIND", "TARGET", "BY", "VERDICT", "STATUS", "REASON"):
        table.add_column(column, justify="right" if column == "ID" else "left")
    for r in sorted(rows, key=lambda r: r.id):
        style = STATUS_STYLE.get(r.status, "")
        table.add_row(
            str(r.id),
            fmt_time(r.ts),
            r.kind,
            _target(r),
            _by(r),
            r.verdict,
            f"[{style}]{r.status}[/]" if style else r.status,
            _escape(r.reason),
        )
    out.print(table)
    return 0


def run_approve(args: argparse.Namespace) -> int:
    from trainwarden.supervisor.api.client import client_for, default_who

    row = client_for(args).approve(args.id, args.who or default_who())
    return report_action(row, as_json=args.json)


def run_reject(args: argparse.Namespace) -> int:
    from trainwarden.supervisor.api.client import client_for, default_who

    row = client_for(args).reject(args.id, args.reason, args.who or default_who())
    return report_action(row, as_json=args.json)


def _target(row: ActionRow) -> str:
    parts = [p for p in (row.node, f"run {row.run}" if row.run else None) if p]
    return " / ".join(parts) or "-"


def _by(row: ActionRow) -> str:
    if row.actor == "operator":
        return f"operator {row.who or '?'}"
    return f"rule {row.rule or '?'}"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def action_summary(row: ActionRow) -> list[str]:
    """The lines that describe one action to an operator."""
    from trainwarden.supervisor.api.client import fmt_time

    lines = [
        f"action {row.id}: {row.kind} {_target(row)} at {fmt_time(row.ts)}",
        f"by {_by(row)}: {row.reason}",
        f"verdict {row.verdict}, status {row.status}" + (f": {row.result}" if row.result else ""),
    ]
    for guard in row.guards:
        mark = "pass" if guard.get("passed") else "FAIL"
        detail = guard.get("detail") or ""
        name = guard.get("guard", "?")
        lines.append(f"guard {name}: {mark}" + (f" ({detail})" if detail else ""))
    if row.evidence:
        lines.append("evidence: events " + ", ".join(str(e) for e in row.evidence))
    return lines


def report_action(row: ActionRow, *, as_json: bool) -> int:
    """Print the outcome of an operator action; exit 1 when it was refused or failed."""
    from trainwarden.supervisor.api.client import console, print_json

    if as_json:
        print_json(row)
    else:
        out = console()
        for line in action_summary(row):
            out.print(line, markup=False)
    return 1 if row.status == "failed" or row.verdict == "block" else 0
