"""``--explain``: the chain behind an action or event -- rule, evidence, guards, actor, result."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from trainwarden.supervisor.api.contract import ActionRow, EventRow, Explanation
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.errors import NotFoundError


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


async def explain(sup: Supervisor, ident: int, what: Literal["event", "action"]) -> Explanation:
    st = sup.store
    if what == "event":
        ev = await st.call(st.store.event, ident)
        if ev is None:
            raise NotFoundError(f"unknown event {ident}")
        lines = [
            f"event {ident} at {_when(ev.ts)}: {ev.kind.value} "
            f"{ev.node or ev.run or ''} -- {ev.message}"
        ]
        action_id = ev.data.get("action_id") if isinstance(ev.data, dict) else None
        if isinstance(action_id, int):
            inner = await explain(sup, action_id, "action")
            return Explanation(
                subject=f"event {ident}",
                lines=lines + inner.lines,
                action=inner.action,
                events=[EventRow.of(ev), *inner.events],
            )
        return Explanation(subject=f"event {ident}", lines=lines, events=[EventRow.of(ev)])
    rec = await st.call(st.store.action, ident)
    if rec is None:
        raise NotFoundError(f"unknown action {ident}")
    who = f"operator {rec.who}" if rec.who else f"rule {rec.rule or '(unnamed)'}"
    lines = [
        f"action {rec.id} at {_when(rec.ts)}: {rec.kind.value}"
        f"{' node ' + rec.node if rec.node else ''}{' run ' + rec.run if rec.run else ''}",
        f"  decided by: {who} ({rec.actor.value})",
        f"  reason: {rec.reason}",
    ]
    evidence = []
    for eid in rec.evidence:
        ev = await st.call(st.store.event, eid)
        if ev is not None:
            evidence.append(ev)
            lines.append(f"  evidence: event {eid} at {_when(ev.ts)} {ev.kind.value}: {ev.message}")
        else:
            lines.append(f"  evidence: event {eid} (no longer stored)")
    if not rec.evidence:
        lines.append(
            "  evidence: none recorded (manual action)" if rec.who else "  evidence: none recorded"
        )
    for g in rec.guards:
        lines.append(
            f"  guard {g.guard}: {'passed' if g.passed else 'BLOCKED'}"
            f"{' -- ' + g.detail if g.detail else ''}"
        )
    lines.append(
        f"  verdict: {rec.verdict.value}; status: {rec.status.value}"
        f"{'; result: ' + rec.result if rec.result else ''}"
    )
    return Explanation(
        subject=f"action {ident}",
        lines=lines,
        action=ActionRow.of(rec),
        events=[EventRow.of(e) for e in evidence],
    )
