"""How the operator commands print: JSON for scripts, rich tables and lines for people.

The noun modules (nodes, runs, events, actions, drain) take their formatting from here and
never from one another, so no command module imports another one.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Collection, Iterable
from typing import Any, TypeVar

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trainwarden.supervisor.api.contract import ActionRow, EventRow, Explanation, NodeDetail

__all__ = [
    "ACTION_STYLE",
    "EVENT_HEADER",
    "action_by",
    "action_summary",
    "action_target",
    "actions_table",
    "console",
    "event_line",
    "events_table",
    "fmt_age",
    "fmt_time",
    "in_order",
    "print_json",
    "print_json_line",
    "render_explanation",
    "render_node",
    "report_action",
    "table",
]

ACTION_STYLE = {
    "succeeded": "green",
    "failed": "bold red",
    "pending": "yellow",
    "rejected": "red",
    "skipped": "dim",
    "approved": "cyan",
    "running": "magenta",
}
R = TypeVar("R", EventRow, ActionRow)


def print_json(payload: BaseModel | list[Any] | dict[str, Any]) -> None:
    """Machine output: one JSON document on stdout (rows as the API sends them)."""

    def plain(item: Any) -> Any:
        return item.model_dump(mode="json") if isinstance(item, BaseModel) else item

    data = [plain(i) for i in payload] if isinstance(payload, list) else plain(payload)
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def print_json_line(row: BaseModel) -> None:
    """One row as one JSON line, flushed: a stream a script reads as it comes (``--follow``)."""
    sys.stdout.write(json.dumps(row.model_dump(mode="json"), separators=(",", ":")) + "\n")
    sys.stdout.flush()


def in_order(rows: Iterable[R], *, reverse: bool = False) -> list[R]:
    """The one order of every listing, table and JSON alike: oldest first (by id), so the
    newest is where the eye and ``tail`` look; ``reverse`` puts the newest first."""
    return sorted(rows, key=lambda r: r.id, reverse=reverse)


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


# a stream of events cannot be one table (its widths are not known in advance): fixed columns
_EVENT_LINE = "{:>8}  {:<19}  {:<18}  {:<14}  {:<14}  {}"
EVENT_HEADER = _EVENT_LINE.format("ID", "TIME", "KIND", "NODE", "RUN", "MESSAGE")


def event_line(row: EventRow) -> str:
    """One event as one line under :data:`EVENT_HEADER` (``events --follow``)."""
    return _EVENT_LINE.format(
        row.id, fmt_time(row.ts), row.kind, row.node or "-", row.run or "-", row.message
    )


def actions_table(rows: list[ActionRow], *, result: bool = False) -> Table:
    """A rich table of actions, in the order given; ``result``: what came of each, not why."""
    last = "RESULT" if result else "REASON"
    out = table("ID", "TIME", "KIND", "TARGET", "BY", "VERDICT", "STATUS", last, right=("ID",))
    for r in rows:
        style = ACTION_STYLE.get(r.status, "")
        out.add_row(
            str(r.id),
            fmt_time(r.ts),
            r.kind,
            action_target(r),
            action_by(r),
            r.verdict,
            f"[{style}]{r.status}[/]" if style else r.status,
            escape((r.result or "-") if result else r.reason),
        )
    return out


def _when(ts: float | None) -> str:
    return "-" if ts is None else f"{fmt_time(ts)} ({fmt_age(ts)})"


def render_node(out: Console, node: NodeDetail, *, state_style: str = "") -> None:
    """One node in detail: its fields, its conditions, and its newest events and actions."""
    state = f"[{state_style}]{node.state}[/]" if state_style else node.state
    out.print(f"[bold]node {escape(node.name)}[/]  {state}")
    fields = Table(box=None, show_header=False, pad_edge=False)
    fields.add_column(style="bold")
    fields.add_column()
    fields.add_row("scheduler", escape(node.scheduler_state or "-"))
    fields.add_row("run", escape(node.run or "-"))
    if node.drained_by is not None:
        fields.add_row("drained by", node.drained_by)
        fields.add_row("drained at", _when(node.drained_at))
        fields.add_row("drain reason", escape(node.drain_reason or "-"))
    fields.add_row("last heartbeat", _when(node.last_heartbeat_at))
    fields.add_row("last report", _when(node.last_report_at))
    if node.returned_at is not None:
        fields.add_row("returned", _when(node.returned_at))
    out.print(fields)
    out.print()
    if node.condition_details:
        out.print("[bold]conditions[/]")
        conds = table("CONDITION", "SINCE", "REASON", "EVIDENCE")
        for c in node.condition_details:
            evidence = ",".join(str(e) for e in c.evidence) or "-"
            conds.add_row(c.type, _when(c.since), escape(c.reason), evidence)
        out.print(conds)
    else:
        out.print("[bold]conditions[/]: none true")
    out.print()
    out.print(f"[bold]events[/] (the newest {len(node.events)})" if node.events else "no events")
    if node.events:
        out.print(events_table(node.events))
    out.print()
    if node.actions:
        out.print(f"[bold]actions[/] (the newest {len(node.actions)})")
        out.print(actions_table(node.actions, result=True))
    else:
        out.print("no actions")


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
    if explanation.followed:
        out.print()
        out.print("[bold]led to[/]")
        out.print(actions_table(explanation.followed, result=True))
