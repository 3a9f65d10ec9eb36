"""The operator service the daemon offers over HTTP: manual actions go through the same
path as automatic ones (recorded, with who and why), and reads come from the store."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from trainwarden import __version__
from trainwarden.policies import hostlist
from trainwarden.policies.model import (
    ActionKind,
    ActionRequest,
    Actor,
    Decision,
    Event,
    EventKind,
    GuardVerdict,
    Incident,
    Verdict,
)
from trainwarden.supervisor.api.contract import (
    ActionRow,
    EventRow,
    Explanation,
    IncidentRow,
    NodeRow,
    RunRow,
    RunSpecIn,
    UnknownReporterRow,
)
from trainwarden.supervisor.api.explain import explain
from trainwarden.supervisor.daemon import operations as ops
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.errors import NotFoundError, SupervisorError
from trainwarden.supervisor.model.cluster import RunInfo, RunSpec
from trainwarden.supervisor.model.lifecycle import RunPhase

VERSION = __version__


class DaemonService:
    """Implements :class:`supervisor.api.contract.OperatorService` over a running Supervisor."""

    def __init__(
        self,
        sup: Supervisor,
        *,
        broker_connected: Callable[[], bool] | None = None,
        leader: Callable[[], bool] | None = None,
        loops: Callable[[], list[str]] | None = None,
    ) -> None:
        self.sup = sup
        self.started_at = time.time()
        self._broker_connected = broker_connected or (lambda: True)
        self._leader = leader or (lambda: True)
        self._loops = loops or (lambda: [])

    # -- nodes -----------------------------------------------------------------------

    async def list_nodes(self) -> list[NodeRow]:
        rows = []
        for n in sorted(self.sup.state.nodes.values(), key=lambda n: n.name):
            rows.append(
                NodeRow(
                    name=n.name,
                    state=n.phase.value,
                    scheduler_state=n.scheduler_state,
                    run=n.run,
                    drained_by=n.drained_by,  # type: ignore[arg-type]
                    drain_reason=n.drain_reason,
                    last_heartbeat_at=n.last_heartbeat_at,
                    conditions=sorted(c.value for c in self.sup.book.types_of(n.name)),
                )
            )
        return rows

    async def list_unknown_reporters(self) -> list[UnknownReporterRow]:
        return [
            UnknownReporterRow(
                name=u.name,
                first_seen=u.first_seen,
                last_seen=u.last_seen,
                messages=u.messages,
                last_topic=u.last_topic,
            )
            for u in sorted(self.sup.state.unknown.values(), key=lambda u: u.name)
        ]

    def _known_node(self, node: str) -> None:
        state = self.sup.state
        if node in state.nodes and state.knows(node):
            return
        if node in state.nodes:
            raise NotFoundError(
                f"node {node!r} is not one of {self.sup.scheduler.name}'s nodes (any more)"
            )
        known = ", ".join(sorted(state.nodes)[:20]) or "none yet"
        raise NotFoundError(f"unknown node {node!r} (known: {known})")

    async def _manual(
        self,
        kind: ActionKind,
        reason: str,
        who: str,
        *,
        node: str | None = None,
        run: str | None = None,
        exclude: tuple[str, ...] = (),
    ) -> ActionRow:
        if not who.strip():
            raise SupervisorError("a manual action needs the operator's name (--who)")
        if not reason.strip():
            raise SupervisorError("a manual action needs a reason (--reason)")
        req = ActionRequest(
            kind=kind,
            actor=Actor.OPERATOR,
            reason=reason,
            node=node,
            run=run,
            who=who,
            exclude=exclude,
        )
        decision = Decision(
            req,
            Verdict.ALLOW,
            (GuardVerdict("operator", True, f"manual action by {who}: guards do not apply"),),
        )
        action_id, _ok, _result = await self.sup.carry_out(decision)
        row = await self._action_row(action_id)
        if kind is ActionKind.DRAIN and node is not None:
            await ops.after_operator_drain(self.sup, node, action_id)
        return row

    async def drain(self, node: str, reason: str, who: str) -> ActionRow:
        self._known_node(node)
        return await self._manual(ActionKind.DRAIN, reason, who, node=node)

    async def undrain(self, node: str, reason: str, who: str) -> ActionRow:
        self._known_node(node)
        return await self._manual(
            ActionKind.UNDRAIN, reason or "returned by operator", who, node=node
        )

    # -- runs ------------------------------------------------------------------------

    def _run_row(self, r: RunInfo) -> RunRow:
        return RunRow(
            name=r.name,
            scheduler=r.scheduler,
            state=r.phase.value,
            attempt=r.attempt,
            restarts=r.restarts,
            nodes=list(r.nodes),
            last_step=r.last_step,
            target_step=r.spec.target_step,
            last_checkpoint_step=r.last_checkpoint_step,
            resumed_from_step=r.resumed_from_step,
            ranks_per_node=r.spec.ranks_per_node,
            command_set_by=r.spec.set_by,
            progress=r.spec.progress,
            progress_detail=self.sup.logs.describe(r.name),
        )

    async def list_runs(self) -> list[RunRow]:
        return [
            self._run_row(r) for r in sorted(self.sup.state.runs.values(), key=lambda r: r.name)
        ]

    async def add_run(self, spec: RunSpecIn, who: str) -> RunRow:
        if spec.name in self.sup.state.runs:
            raise SupervisorError(f"run {spec.name!r} already exists")
        if spec.scheduler != self.sup.scheduler.name:
            raise SupervisorError(
                f"run {spec.name!r} asks for the {spec.scheduler} scheduler but this daemon "
                f"drives {self.sup.scheduler.name}"
            )
        if spec.min_nodes is not None and spec.min_nodes > spec.nodes:
            raise SupervisorError(f"min_nodes {spec.min_nodes} is more than nodes {spec.nodes}")
        run_spec = RunSpec(
            command=tuple(spec.command),
            nodes=spec.nodes,
            checkpoint_dir=spec.checkpoint_dir,
            env=dict(spec.env),
            target_step=spec.target_step,
            min_nodes=spec.min_nodes,
            ranks_per_node=spec.ranks_per_node,
            set_by=who,
            checkpoint_format=spec.checkpoint_format,
            progress=spec.progress,
        )
        run = await ops.add_run(
            self.sup, spec.name, spec.scheduler, run_spec, who, submit=not spec.adopt
        )
        return self._run_row(run)

    async def restart_run(self, run: str, reason: str, who: str) -> ActionRow:
        info = self.sup.state.runs.get(run)
        if info is None:
            raise NotFoundError(f"unknown run {run!r}")
        if info.phase is RunPhase.COMPLETED:
            raise SupervisorError(f"run {run!r} has completed; nothing to restart")
        return await self._manual(ActionKind.RESTART_RUN, reason, who, run=run)

    # -- events and actions ----------------------------------------------------------

    async def list_events(
        self,
        *,
        limit: int,
        node: str | None,
        run: str | None,
        kind: str | None,
        since_id: int | None,
    ) -> list[EventRow]:
        st = self.sup.store
        events = await st.call(
            st.store.events,
            since_id=since_id,
            node=node,
            run=run,
            kinds=[kind] if kind else None,
            limit=limit,
        )
        return [EventRow.of(e) for e in events]

    async def _action_row(self, action_id: int) -> ActionRow:
        st = self.sup.store
        rec = await st.call(st.store.action, action_id)
        if rec is None:
            raise NotFoundError(f"unknown action {action_id}")
        return ActionRow.of(rec)

    async def list_actions(self, *, status: str | None, limit: int) -> list[ActionRow]:
        st = self.sup.store
        recs = await st.call(st.store.actions, status=status, limit=limit)
        return [ActionRow.of(r) for r in recs]

    async def list_incidents(self, *, open_only: bool) -> list[IncidentRow]:
        rows = [_incident_row(i) for i in self.sup.policy.incidents() if i.open or not open_only]
        return sorted(rows, key=lambda r: r.opened_at, reverse=True)

    async def close_incident(self, ident: str, reason: str, who: str) -> IncidentRow:
        now = self.sup.clock.now()
        inc = self.sup.policy.resolve_incident(ident, now)
        if inc is None:
            raise NotFoundError(f"no open incident {ident!r} (`trainwarden incidents --open`)")
        await self.sup.record_events_later(
            [
                Event(
                    now,
                    EventKind.ACTION,
                    node=inc.nodes[0] if len(inc.nodes) == 1 else None,
                    message=f"incident {inc.id} ({inc.kind.value} {inc.subject}) closed by "
                    f"{who}: {reason}",
                    data={"incident": inc.id, "who": who, "closed": True},
                )
            ]
        )
        return _incident_row(inc)

    async def explain(self, ident: int, what: Literal["event", "action"]) -> Explanation:
        return await explain(self.sup, ident, what)

    async def approve(self, action_id: int, who: str) -> ActionRow:
        await ops.resolve_queued(self.sup, action_id, approve=True, who=who, reason="approved")
        return await self._action_row(action_id)

    async def reject(self, action_id: int, reason: str, who: str) -> ActionRow:
        await ops.resolve_queued(self.sup, action_id, approve=False, who=who, reason=reason)
        return await self._action_row(action_id)

    def status(self) -> dict[str, Any]:
        broker = bool(self._broker_connected())
        problems = self._loops()
        hearing = self.sup.core.hearing
        store = self.sup.store.status()
        store["decisions_held"] = len(self.sup.held_work)
        return {
            "ok": broker and store["available"] and not problems,
            "broker": broker,
            "problems": problems,
            "verdicts_suspended": hearing.suspended,
            "bus_lag_s": round(hearing.lag_s(), 3),
            "db": store["available"],
            "store": store,
            "leader": bool(self._leader()),
            "started_at": self.started_at,
            "version": VERSION,
            "nodes": len(self.sup.state.nodes),
            "runs": len(self.sup.state.runs),
            "rejected_messages": self.sup.rejected,
        }


def _incident_row(i: Incident) -> IncidentRow:
    return IncidentRow(
        id=i.id,
        kind=i.kind.value,
        subject=i.subject,
        opened_at=i.opened_at,
        cleared_at=i.cleared_at,
        open=i.open,
        detail=i.detail,
        nodes=hostlist.compress(i.nodes),
        node_count=len(i.nodes),
    )
