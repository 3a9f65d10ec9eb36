"""Events, conditions, nodes and the batched write the daemon's flusher makes.

The daemon must not write once per MQTT message: it collects events, condition changes,
heartbeats and node updates into a :class:`~trainwarden.supervisor.store.records.StoreBatch` and
calls :meth:`StateStore.write_batch` every half second or so; that is one transaction
with one multi-row statement per table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, select, update

from trainwarden.policies.model import Condition, ConditionType, Event, EventKind
from trainwarden.supervisor.errors import NotFoundError, StoreError
from trainwarden.supervisor.store.base import (
    StoreCore,
    checked_fields,
    dedupe,
    enum_or_str,
    json_ready,
    later_of,
    table,
)
from trainwarden.supervisor.store.bulk import pg_insert_events, pg_touch_nodes, sqlite_insert_events
from trainwarden.supervisor.store.records import NodeRecord, StoreBatch

EVENTS = table("events")
CONDITIONS = table("conditions")
NODES = table("nodes")
NODE_FIELDS = frozenset(c.name for c in NODES.columns) - {"name"}


class StateStore(StoreCore):
    """Append-only events, lasting conditions and the node table."""

    # -- events -------------------------------------------------------------------------
    def append_events(self, events: Sequence[Event]) -> list[int]:
        """Store ``events`` in one transaction; their ids, in the same order."""
        rows = [_event_row(e) for e in events]
        with self._write(f"appending {len(rows)} events") as conn:
            return self._insert_events(conn, rows)

    def events(
        self,
        *,
        since_id: int | None = None,
        node: str | None = None,
        run: str | None = None,
        kinds: Sequence[EventKind | str] | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
    ) -> list[Event]:
        """Events matching every filter given; ``since_id`` excludes that id itself."""
        q = select(EVENTS)
        if since_id is not None:
            q = q.where(EVENTS.c.id > since_id)
        if node is not None:
            q = q.where(EVENTS.c.node == node)
        if run is not None:
            q = q.where(EVENTS.c.run == run)
        if kinds:
            q = q.where(EVENTS.c.kind.in_([str(k) for k in kinds]))
        q = q.order_by(EVENTS.c.id.desc() if newest_first else EVENTS.c.id.asc())
        if limit is not None:
            q = q.limit(limit)
        with self._read("reading events") as conn:
            return [_event(r) for r in conn.execute(q)]

    def event(self, event_id: int) -> Event | None:
        with self._read("reading an event") as conn:
            row = conn.execute(select(EVENTS).where(EVENTS.c.id == event_id)).first()
        return None if row is None else _event(row)

    def _insert_events(self, conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
        if not rows:
            return []
        if self.dialect == "postgresql":
            return pg_insert_events(conn, rows)
        return sqlite_insert_events(conn, EVENTS, rows)

    # -- conditions ---------------------------------------------------------------------
    def save_conditions(self, conds: Sequence[Condition], *, now: float | None = None) -> None:
        """Upsert each condition by subject x type; ``updated_at`` is ``now`` (else ``since``)."""
        rows = [_condition_row(c, now) for c in conds]
        with self._write(f"saving {len(rows)} conditions") as conn:
            self._upsert(conn, CONDITIONS, dedupe(rows, ("subject", "type")), ("subject", "type"))

    def conditions(self, subject: str | None = None, active_only: bool = False) -> list[Condition]:
        q = select(CONDITIONS).order_by(CONDITIONS.c.subject, CONDITIONS.c.type)
        if subject is not None:
            q = q.where(CONDITIONS.c.subject == subject)
        if active_only:
            q = q.where(CONDITIONS.c.status.is_(True))
        with self._read("reading conditions") as conn:
            return [
                Condition(
                    subject=r.subject,
                    type=enum_or_str(ConditionType, r.type),
                    status=bool(r.status),
                    reason=r.reason,
                    since=r.since,
                    evidence=tuple(r.evidence),
                )
                for r in conn.execute(q)
            ]

    # -- nodes --------------------------------------------------------------------------
    def upsert_nodes(self, nodes: Sequence[NodeRecord]) -> None:
        """Insert or replace nodes; heartbeat and report times never move backwards."""
        rows = [_node_row(n) for n in nodes]
        with self._write(f"saving {len(rows)} nodes") as conn:
            self._upsert_nodes(conn, rows)

    def touch_nodes(self, heartbeats: Mapping[str, float]) -> None:
        """Record the latest heartbeat of many nodes at once (unknown nodes are added)."""
        with self._write(f"recording {len(heartbeats)} heartbeats") as conn:
            self._touch(conn, heartbeats)

    def update_node(self, name: str, /, **fields: Any) -> None:
        """Change some columns of one node (NotFoundError if it does not exist)."""
        values = checked_fields(fields, NODE_FIELDS, f"node {name!r}")
        if "labels" in values:
            values["labels"] = json_ready(dict(values["labels"]), f"labels of node {name!r}")
        with self._write(f"updating node {name!r}") as conn:
            result = conn.execute(update(NODES).where(NODES.c.name == name).values(**values))
            if result.rowcount == 0:
                raise NotFoundError(f"no node named {name!r}")

    def nodes(self) -> list[NodeRecord]:
        with self._read("reading nodes") as conn:
            return [_node(r) for r in conn.execute(select(NODES).order_by(NODES.c.name))]

    def node(self, name: str) -> NodeRecord | None:
        with self._read("reading a node") as conn:
            row = conn.execute(select(NODES).where(NODES.c.name == name)).first()
        return None if row is None else _node(row)

    def _upsert_nodes(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        sets: dict[str, Any] = {
            c: (lambda ex, c=c: ex[c])
            for c in NODE_FIELDS - {"last_heartbeat_at", "last_report_at"}
        }
        for col in ("last_heartbeat_at", "last_report_at"):
            sets[col] = lambda ex, col=col: later_of(NODES.c[col], ex[col])
        self._upsert(conn, NODES, dedupe(rows, ("name",)), ("name",), sets)

    def _touch(self, conn: Connection, heartbeats: Mapping[str, float]) -> None:
        if not heartbeats:
            return
        if self.dialect == "postgresql":
            pg_touch_nodes(conn, heartbeats)
            return
        rows = [
            {"name": name, "state": "unknown", "labels": {}, "last_heartbeat_at": float(ts)}
            for name, ts in heartbeats.items()
        ]
        later = {
            "last_heartbeat_at": lambda ex: later_of(
                NODES.c.last_heartbeat_at, ex.last_heartbeat_at
            )
        }
        self._upsert(conn, NODES, rows, ("name",), later)

    # -- the flusher's batch ------------------------------------------------------------
    def write_batch(self, batch: StoreBatch, *, now: float | None = None) -> list[int]:
        """Apply a whole batch in ONE transaction (node upserts, heartbeats, events,
        conditions, in that order); returns the new events' ids in order. On any failure
        nothing of the batch is stored and StoreError is raised."""
        nodes = [_node_row(n) for n in batch.nodes]
        events = [_event_row(e) for e in batch.events]
        conds = [_condition_row(c, now) for c in batch.conditions]
        with self._write(f"writing a batch of {len(batch)} items") as conn:
            self._upsert_nodes(conn, nodes)
            self._touch(conn, batch.heartbeats)
            ids = self._insert_events(conn, events)
            self._upsert(conn, CONDITIONS, dedupe(conds, ("subject", "type")), ("subject", "type"))
        return ids


def _event_row(e: Event) -> dict[str, Any]:
    if e.id is not None:
        raise StoreError(f"event already stored (id {e.id}); events are append-only")
    what = f"{e.kind} event"
    return {
        "ts": float(e.ts),
        "kind": str(e.kind),
        "node": e.node,
        "run": e.run,
        "message": e.message,
        "data": json_ready(dict(e.data), f"the data of a {what}"),
    }


def _event(r: Row[Any]) -> Event:
    return Event(
        ts=r.ts,
        kind=enum_or_str(EventKind, r.kind),
        node=r.node,
        run=r.run,
        message=r.message,
        data=r.data,
        id=r.id,
    )


def _condition_row(c: Condition, now: float | None) -> dict[str, Any]:
    return {
        "subject": c.subject,
        "type": str(c.type),
        "status": bool(c.status),
        "reason": c.reason,
        "since": float(c.since),
        "updated_at": float(now if now is not None else c.since),
        "evidence": [int(i) for i in c.evidence],
    }


def _node_row(n: NodeRecord) -> dict[str, Any]:
    return {
        "name": n.name,
        "state": n.state,
        "scheduler_state": n.scheduler_state,
        "drained_by": n.drained_by,
        "drain_reason": n.drain_reason,
        "last_heartbeat_at": n.last_heartbeat_at,
        "last_report_at": n.last_report_at,
        "updated_at": n.updated_at,
        "labels": json_ready(dict(n.labels), f"labels of node {n.name!r}"),
    }


def _node(r: Row[Any]) -> NodeRecord:
    return NodeRecord(
        name=r.name,
        state=r.state,
        scheduler_state=r.scheduler_state,
        drained_by=r.drained_by,
        drain_reason=r.drain_reason,
        last_heartbeat_at=r.last_heartbeat_at,
        last_report_at=r.last_report_at,
        updated_at=r.updated_at,
        labels=r.labels,
    )
