"""The policy's incidents in the store: written as they open and close, restored on start.

An incident is what automation stopped for (a crash loop, a spent restart budget, a lemon
node, a correlated failure); a daemon restart or a failover must not forget it, or the new
leader would restart the crash-looping run and drain the nodes of a storage outage.
"""

from __future__ import annotations

import logging
from typing import Any

from trainwarden.policies.model import Incident, IncidentKind
from trainwarden.supervisor.daemon.context import DaemonContext
from trainwarden.supervisor.errors import StoreError
from trainwarden.supervisor.store.records import IncidentRecord

log = logging.getLogger(__name__)


async def persist(ctx: DaemonContext) -> None:
    """Store incidents the policy opened or closed since the last call (a database outage
    leaves them for the next call)."""
    for inc in ctx.policy.incidents():
        row = ctx.incident_rows.get(inc.id)
        if row is None:
            if not inc.open:
                continue  # opened and closed before it could be stored: nothing to keep
            try:
                stored: int = await ctx.store.call(
                    ctx.store.store.open_incident,
                    inc.kind.value,
                    inc.subject,
                    inc.opened_at,
                    _detail(inc),
                )
            except StoreError as exc:
                log.warning("incident %s not stored yet: %s", inc.id, exc)
                return
            ctx.incident_rows[inc.id] = row = stored
        if not inc.open and inc.id not in ctx.incidents_closed:
            ctx.incidents_closed.add(inc.id)
            await ctx.store.write(
                ctx.store.store.close_incident, row, inc.cleared_at or ctx.clock.now()
            )


async def restore(ctx: DaemonContext, now: float) -> int:
    """Give the policy the open incidents the store holds; returns how many."""
    rows = await ctx.store.call(ctx.store.store.incidents, limit=None)
    seq = max((_seq(r) for r in rows), default=0)
    open_ = [(r, _incident(r)) for r in rows if r.open]
    ctx.policy.restore_incidents([inc for _, inc in open_], now, seq)
    for r, inc in open_:
        ctx.incident_rows[inc.id] = r.id
    if open_:
        log.warning(
            "%d open incident(s) restored: %s",
            len(open_),
            "; ".join(f"{inc.id} {inc.kind.value} {inc.subject}" for _, inc in open_),
        )
    return len(open_)


def _detail(inc: Incident) -> dict[str, Any]:
    return {
        "id": inc.id,
        "detail": inc.detail,
        "nodes": list(inc.nodes),
        "evidence": list(inc.evidence),
    }


def _seq(r: IncidentRecord) -> int:
    text = str(r.detail.get("id", ""))
    number = text.removeprefix("INC-")
    return int(number) if number.isdigit() else 0


def _incident(r: IncidentRecord) -> Incident:
    d = r.detail
    kind = r.kind if r.kind in IncidentKind._value2member_map_ else IncidentKind.CORRELATED.value
    return Incident(
        str(d.get("id") or f"INC-store-{r.id}"),
        IncidentKind(kind),
        r.cause,
        r.opened_at,
        str(d.get("detail", "")),
        tuple(str(n) for n in d.get("nodes", []) if isinstance(n, str)),
        r.closed_at,
        tuple(int(e) for e in d.get("evidence", []) if isinstance(e, int)),
    )
