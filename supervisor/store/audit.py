"""Recorded actions (every decision, with its guards and result), cluster incidents and
the leader lease that lets a standby daemon take over."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from trainwarden.policies.model import ActionKind, Actor, Decision, GuardVerdict, Verdict
from trainwarden.supervisor.errors import NotFoundError, StoreError
from trainwarden.supervisor.store.base import StoreCore, enum_or_str, json_ready, table
from trainwarden.supervisor.store.records import (
    ActionRecord,
    ActionStatus,
    IncidentRecord,
    Lease,
    initial_status,
)

ACTIONS = table("actions")
INCIDENTS = table("incidents")
LEASES = table("leader_lease")


class ActionStore(StoreCore):
    """Actions, incidents and leases."""

    # -- actions ------------------------------------------------------------------------
    def record_action(
        self, decision: Decision, *, ts: float, status: ActionStatus | None = None
    ) -> int:
        """Record a decision (whatever its verdict); returns the action's id. The status
        defaults to pending, or skipped for blocked and dry-run decisions."""
        req = decision.request
        row = {
            "ts": float(ts),
            "kind": str(req.kind),
            "actor": str(req.actor),
            "who": req.who,
            "rule": req.rule,
            "node": req.node,
            "run": req.run,
            "reason": req.reason,
            "evidence": [int(i) for i in req.evidence],
            "exclude": [str(n) for n in req.exclude],
            "guards": [
                {"guard": g.guard, "passed": bool(g.passed), "detail": g.detail}
                for g in decision.guards
            ],
            "verdict": str(decision.verdict),
            "status": str(status or initial_status(decision.verdict)),
        }
        with self._write(f"recording a {req.kind} action") as conn:
            return int(
                conn.execute(insert(ACTIONS).values(**row).returning(ACTIONS.c.id)).scalar_one()
            )

    def update_action(
        self,
        action_id: int,
        *,
        status: ActionStatus,
        result: str | None = None,
        finished_at: float | None = None,
        verdict: Verdict | None = None,
    ) -> None:
        """The action's progress; ``verdict`` when a held decision is released or a queued
        one approved, so the record says what the guards and restore must count."""
        values: dict[str, Any] = {"status": str(ActionStatus(status))}
        if verdict is not None:
            values["verdict"] = str(Verdict(verdict))
        if result is not None:
            values["result"] = result
        if finished_at is not None:
            values["finished_at"] = float(finished_at)
        with self._write(f"updating action {action_id}") as conn:
            stmt = update(ACTIONS).where(ACTIONS.c.id == action_id).values(**values)
            if conn.execute(stmt).rowcount == 0:
                raise NotFoundError(f"no action with id {action_id}")

    def actions(
        self,
        *,
        status: ActionStatus | str | None = None,
        run: str | None = None,
        node: str | None = None,
        since: float | None = None,
        limit: int | None = 100,
    ) -> list[ActionRecord]:
        """Actions matching every filter given, newest first."""
        q = select(ACTIONS).order_by(ACTIONS.c.id.desc())
        if status is not None:
            q = q.where(ACTIONS.c.status == str(status))
        if run is not None:
            q = q.where(ACTIONS.c.run == run)
        if node is not None:
            q = q.where(ACTIONS.c.node == node)
        if since is not None:
            q = q.where(ACTIONS.c.ts >= since)
        if limit is not None:
            q = q.limit(limit)
        with self._read("reading actions") as conn:
            return [_action(r) for r in conn.execute(q)]

    def action(self, action_id: int) -> ActionRecord | None:
        with self._read("reading an action") as conn:
            row = conn.execute(select(ACTIONS).where(ACTIONS.c.id == action_id)).first()
        return None if row is None else _action(row)

    # -- incidents ----------------------------------------------------------------------
    def open_incident(
        self, kind: str, cause: str, opened_at: float, detail: Mapping[str, Any] | None = None
    ) -> int:
        row = {
            "kind": kind,
            "cause": cause,
            "opened_at": float(opened_at),
            "detail": json_ready(dict(detail or {}), f"the detail of incident {kind!r}"),
        }
        with self._write(f"opening a {kind} incident") as conn:
            return int(
                conn.execute(insert(INCIDENTS).values(**row).returning(INCIDENTS.c.id)).scalar_one()
            )

    def close_incident(self, incident_id: int, closed_at: float) -> bool:
        """Close an incident; False if it was closed already (its close time is kept)."""
        with self._write(f"closing incident {incident_id}") as conn:
            row = conn.execute(
                select(INCIDENTS.c.closed_at).where(INCIDENTS.c.id == incident_id)
            ).first()
            if row is None:
                raise NotFoundError(f"no incident with id {incident_id}")
            if row.closed_at is not None:
                return False
            conn.execute(
                update(INCIDENTS)
                .where(INCIDENTS.c.id == incident_id)
                .values(closed_at=float(closed_at))
            )
            return True

    def incidents(self, open_only: bool = False, limit: int | None = 100) -> list[IncidentRecord]:
        """Incidents, newest first."""
        q = select(INCIDENTS).order_by(INCIDENTS.c.id.desc())
        if open_only:
            q = q.where(INCIDENTS.c.closed_at.is_(None))
        if limit is not None:
            q = q.limit(limit)
        with self._read("reading incidents") as conn:
            return [IncidentRecord(**r._asdict()) for r in conn.execute(q)]

    # -- leader lease -------------------------------------------------------------------
    def acquire_lease(self, name: str, holder: str, ttl_s: float, now: float | None = None) -> bool:
        """Take or renew lease ``name`` for ``holder`` until ``now + ttl_s``; True when
        ``holder`` holds it afterwards. Atomic on both dialects: a single conditional
        upsert that only overwrites a lease held by ``holder`` or already expired.

        ``now`` None: the database's own clock on PostgreSQL (daemons on hosts whose clocks
        differ then agree on when a lease runs out), this host's on SQLite (one host)."""
        if ttl_s <= 0:
            raise StoreError(f"lease {name!r}: ttl must be positive, not {ttl_s}")
        with self._write(f"acquiring lease {name!r}") as conn:
            if now is None:
                now = self._clock(conn)
            expires = float(now) + float(ttl_s)
            stmt = self._insert(LEASES).values(name=name, holder=holder, expires_at=expires)
            stmt = stmt.on_conflict_do_update(
                index_elements=["name"],
                set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
                where=(LEASES.c.holder == holder) | (LEASES.c.expires_at <= float(now)),
            )
            conn.execute(stmt)
            row = conn.execute(select(LEASES.c.holder).where(LEASES.c.name == name)).first()
        return row is not None and row.holder == holder

    def _clock(self, conn: Connection) -> float:
        if self.dialect == "postgresql":
            sql = "SELECT extract(epoch from clock_timestamp())"
            return float(conn.exec_driver_sql(sql).scalar_one())
        return time.time()

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up (a clean shutdown); False if ``holder`` did not hold it."""
        where = (LEASES.c.name == name) & (LEASES.c.holder == holder)
        with self._write(f"releasing lease {name!r}") as conn:
            return bool(conn.execute(LEASES.delete().where(where)).rowcount)

    def lease(self, name: str) -> Lease | None:
        with self._read(f"reading lease {name!r}") as conn:
            row = conn.execute(select(LEASES).where(LEASES.c.name == name)).first()
        return None if row is None else Lease(**row._asdict())


def _action(r: Row[Any]) -> ActionRecord:
    return ActionRecord(
        id=r.id,
        ts=r.ts,
        kind=enum_or_str(ActionKind, r.kind),
        actor=enum_or_str(Actor, r.actor),
        reason=r.reason,
        verdict=enum_or_str(Verdict, r.verdict),
        status=enum_or_str(ActionStatus, r.status),
        who=r.who,
        rule=r.rule,
        node=r.node,
        run=r.run,
        evidence=tuple(r.evidence),
        exclude=tuple(r.exclude),
        guards=tuple(
            GuardVerdict(guard=g["guard"], passed=bool(g["passed"]), detail=g.get("detail", ""))
            for g in r.guards
        ),
        result=r.result,
        finished_at=r.finished_at,
    )
