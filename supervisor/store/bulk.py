"""Fast paths for the writes that scale with the cluster: event batches and heartbeats.

Returning the ids of a multi-row INSERT in input order is what the generic path does
slowly: on PostgreSQL it binds every value as its own parameter (7,000 for 1,000 events)
and psycopg spends most of a flush parsing that statement; on SQLite it falls back to
one statement per row. PostgreSQL binds one array per column and lets ``unnest`` expand
them; SQLite uses the driver's executemany and reads the new ids back (see
``bench/store_batch.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, func, insert, select, text

from trainwarden.supervisor.errors import StoreError

# Rows come out of ``unnest ... WITH ORDINALITY ORDER BY n`` in input order and the id
# sequence is drawn in that order, so the ids sorted ascending match the input order.
_EVENTS = text(
    """
    INSERT INTO events (ts, kind, node, run, message, data)
    SELECT u.ts, u.kind, u.node, u.run, u.message, u.data::jsonb
    FROM unnest(CAST(:ts AS double precision[]), CAST(:kind AS text[]),
                CAST(:node AS text[]), CAST(:run AS text[]), CAST(:message AS text[]),
                CAST(:data AS text[]))
         WITH ORDINALITY AS u(ts, kind, node, run, message, data, n)
    ORDER BY u.n
    RETURNING id
    """
)

# A heartbeat never moves last_heartbeat_at backwards; an unknown node is added.
_TOUCH = text(
    """
    INSERT INTO nodes (name, state, labels, last_heartbeat_at)
    SELECT u.name, 'unknown', '{}'::jsonb, u.ts
    FROM unnest(CAST(:name AS text[]), CAST(:ts AS double precision[])) AS u(name, ts)
    ON CONFLICT (name) DO UPDATE SET last_heartbeat_at = CASE
        WHEN nodes.last_heartbeat_at IS NULL
          OR excluded.last_heartbeat_at > nodes.last_heartbeat_at
        THEN excluded.last_heartbeat_at ELSE nodes.last_heartbeat_at END
    """
)


def pg_insert_events(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert event rows (as built by the store) and return their ids in input order."""
    params = {
        "ts": [r["ts"] for r in rows],
        "kind": [r["kind"] for r in rows],
        "node": [r["node"] for r in rows],
        "run": [r["run"] for r in rows],
        "message": [r["message"] for r in rows],
        "data": [json.dumps(r["data"]) for r in rows],
    }
    ids = sorted(int(r[0]) for r in conn.execute(_EVENTS, params))
    return ids


def pg_touch_nodes(conn: Connection, heartbeats: Mapping[str, float]) -> None:
    """Record many heartbeats in one statement."""
    names = list(heartbeats)
    conn.execute(_TOUCH, {"name": names, "ts": [float(heartbeats[n]) for n in names]})


def sqlite_insert_events(
    conn: Connection, events: Table, rows: Sequence[Mapping[str, Any]]
) -> list[int]:
    """Insert event rows with one executemany; their ids in input order.

    Only valid inside the store's write transaction (``BEGIN IMMEDIATE``): no other
    writer can insert meanwhile, and SQLite gives each new row the largest rowid + 1, so
    the rows above the previous maximum are exactly ours, in insertion order.
    """
    before = conn.execute(select(func.max(events.c.id))).scalar() or 0
    conn.execute(insert(events), list(rows))
    q = select(events.c.id).where(events.c.id > before).order_by(events.c.id)
    ids = [int(r[0]) for r in conn.execute(q)]
    if len(ids) != len(rows):  # pragma: no cover - would mean the lock did not hold
        raise StoreError(f"inserted {len(rows)} events but found {len(ids)} new ids")
    return ids
