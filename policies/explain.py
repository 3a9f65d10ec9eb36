"""Explaining a decision as lines a person reads: what, who, why, on which evidence, each guard.

:func:`explain` takes a :class:`Decision` or a stored action record (a mapping with the
same fields, as the daemon's API returns it) and optionally the evidence events by id, so
``trainwarden events --explain ID`` and ``trainwarden sim --explain`` print the same chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainwarden.policies.model import Decision, Event


def to_record(item: Decision | Mapping[str, Any]) -> dict[str, Any]:
    """A decision as a JSON-able mapping (what :func:`explain` reads back from a store)."""
    if isinstance(item, Decision):
        r = item.request
        return {
            "kind": r.kind.value,
            "verdict": item.verdict.value,
            "actor": r.actor.value,
            "rule": r.rule,
            "who": r.who,
            "reason": r.reason,
            "node": r.node,
            "run": r.run,
            "evidence": list(r.evidence),
            "exclude": list(r.exclude),
            "guards": [
                {"guard": v.guard, "passed": v.passed, "detail": v.detail} for v in item.guards
            ],
        }
    return dict(item)


def _target(f: Mapping[str, Any]) -> str:
    parts = []
    if f.get("node"):
        parts.append(f"node {f['node']}")
    if f.get("run"):
        parts.append(f"run {f['run']}")
    if f.get("exclude"):
        parts.append(f"excluding {', '.join(map(str, f['exclude']))}")
    return f" ({'; '.join(parts)})" if parts else ""


def explain(
    item: Decision | Mapping[str, Any],
    events: Mapping[int, Event] | None = None,
    *,
    ident: str | None = None,
    ts: float | None = None,
) -> list[str]:
    """Lines describing one decision or action record, evidence and guard by guard."""
    f = to_record(item)
    head = f"{ident}: " if ident else ""
    when = f" at t={ts:,.0f}s" if ts is not None else ""
    lines = [f"{head}{f.get('kind', '?')}{_target(f)} -> {f.get('verdict', '?')}{when}"]
    actor = f.get("actor") or "?"
    if actor == "operator":
        lines.append(f"  by: operator {f.get('who') or '(unnamed)'}")
    else:
        by = f"rule {f['rule']!r}" if f.get("rule") else "rule (unnamed)"
        if f.get("who"):
            by += f", resolved by {f['who']}"
        lines.append(f"  by: {by}")
    lines.append(f"  why: {f.get('reason') or '(no reason recorded)'}")
    evidence = list(f.get("evidence") or [])
    if evidence:
        lines.append(f"  evidence: {', '.join(f'#{e}' for e in evidence)}")
        for eid in evidence:
            ev = (events or {}).get(int(eid))
            if ev is not None:
                where = ev.node or ev.run or "-"
                detail = ev.message or ", ".join(f"{k}={v}" for k, v in ev.data.items())
                lines.append(f"    #{eid} t={ev.ts:,.0f}s {ev.kind.value} {where}: {detail}")
    else:
        lines.append("  evidence: none recorded")
    guards = list(f.get("guards") or [])
    if guards:
        lines.append("  guards:")
        for gv in guards:
            mark = "pass" if gv.get("passed") else "FAIL"
            lines.append(f"    {mark:4} {gv.get('guard')}: {gv.get('detail', '')}")
    else:
        lines.append("  guards: none apply")
    return lines
