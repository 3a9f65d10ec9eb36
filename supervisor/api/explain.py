"""``--explain``: the chain behind an action or event -- rule, evidence, guards, actor, result;
for an event, also what followed from it: the actions that cite it as evidence."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from trainwarden.supervisor.api.contract import ActionRow, EventRow, Explanation
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.errors import NotFoundError
from trainwarden.supervisor.store.records import ActionRecord

# the most actions recorded after an event that are searched for the ones citing it
FOLLOWED_SCAN = 10_000


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
        followed = await _followed(sup, ident, ev.ts)
        led = _led_to(followed)
        action_id = ev.data.get("action_id") if isinstance(ev.data, dict) else None
        if isinstance(action_id, int):
            inner = await explain(sup, action_id, "action")
            return Explanation(
                subject=f"event {ident}",
                lines=lines + inner.lines + led,
                action=inner.action,
                events=[EventRow.of(ev), *inner.events],
                followed=[ActionRow.of(r) for r in followed],
            )
        return Explanation(
            subject=f"event {ident}",
            lines=lines + led,
            events=[EventRow.of(ev)],
            followed=[ActionRow.of(r) for r in followed],
        )
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


async def _followed(sup: Supervisor, event_id: int, ts: float) -> list[ActionRecord]:
    """The actions that cite event ``event_id`` as evidence, oldest first: the store cannot
    search inside evidence, so the actions recorded since the event are read and filtered
    (actions are few next to events; the event and its actions share the daemon's clock)."""
    st = sup.store
    recs = await st.call(st.store.actions, since=ts - 1.0, limit=FOLLOWED_SCAN)
    return sorted((r for r in recs if event_id in r.evidence), key=lambda r: r.id)


def _led_to(followed: list[ActionRecord]) -> list[str]:
    if not followed:
        return ["  led to: no action"]
    return [
        f"  led to: action {r.id} {r.kind.value}"
        f"{' node ' + r.node if r.node else ''}{' run ' + r.run if r.run else ''}"
        f" ({r.verdict.value}): {r.status.value}{' -- ' + r.result if r.result else ''}"
        for r in followed
    ]
