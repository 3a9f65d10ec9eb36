"""How the operator commands print: JSON for scripts, rich tables and lines for people.

The noun modules (nodes, runs, events, actions, drain) take their formatting from here and
never from one another, so no command module imports another one.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Collection
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trainwarden.supervisor.api.contract import ActionRow, EventRow, Explanation

__all__ = [
    "action_by",
    "action_summary",
    "action_target",
    "console",
    "events_table",
    "fmt_age",
    "fmt_time",
    "print_json",
    "render_explanation",
    "report_action",
    "table",
]


def print_json(payload: BaseModel | list[Any] | dict[str, Any]) -> None:
    """Machine output: one JSON document on stdout (rows as the API sends them)."""

    def plain(item: Any) -> Any:
        return item.model_dump(mode="json") if isinstance(item, BaseModel) else item

    data = [plain(i) for i in payload] if isinstance(payload, list) else plain(payload)
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def console() -> Console:
    """A rich console on stdout; wide when not a terminal so piped tables are not folded."""
    out = Console(highlight=False, soft_wrap=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=200)
    return out


def table(*columns: str, right: Collection[str] = ()) -> Table:
    """A borderless table with bold headers, the style of every listing; ``right``: aligned so."""
    out = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        out.add_column(column, justify="right" if column in right else "left")
    return out


def fmt_time(ts: float | None) -> str:
    """A timestamp as local ``YYYY-MM-DD HH:MM:SS``; '-' when unknown."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def fmt_age(ts: float | None, now: float | None = None) -> str:
    """How long ago ``ts`` was, compactly (``4s``, ``3m``, ``2h``, ``5d``); '-' when unknown."""
    if ts is None:
        return "-"
    age = max(0.0, (time.time() if now is None else now) - ts)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if age >= size:
            return f"{int(age // size)}{unit} ago"
    return f"{int(age)}s ago"


def action_target(row: ActionRow) -> str:
    """What an action was about: its node and/or run, '-' for neither."""
    parts = [p for p in (row.node, f"run {row.run}" if row.run else None) if p]
    return " / ".join(parts) or "-"


def action_by(row: ActionRow) -> str:
    """Who took an action: the operator by name, or the rule."""
    if row.actor == "operator":
        return f"operator {row.who or '?'}"
    return f"rule {row.rule or '?'}"


def action_summary(row: ActionRow) -> list[str]:
    """The lines that describe one action to an operator."""
    lines = [
        f"action {row.id}: {row.kind} {action_target(row)} at {fmt_time(row.ts)}",
        f"by {action_by(row)}: {row.reason}",
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
    if as_json:
        print_json(row)
    else:
        out = console()
        for line in action_summary(row):
            out.print(line, markup=False)
    return 1 if row.status == "failed" or row.verdict == "block" else 0


def events_table(rows: list[EventRow]) -> Table:
    """A rich table of events, in the order given."""
    out = table("ID", "TIME", "KIND", "NODE", "RUN", "MESSAGE", right=("ID",))
    for r in rows:
        out.add_row(
            str(r.id), fmt_time(r.ts), r.kind, r.node or "-", r.run or "-", escape(r.message)
        )
    return out


def render_explanation(out: Console, explanation: Explanation) -> None:
    """Print an explanation: its lines (or, without any, the action's summary) and evidence."""
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
