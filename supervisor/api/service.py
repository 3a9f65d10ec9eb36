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
    ConditionRow,
    EventRow,
    Explanation,
    GoodputRow,
    IncidentRow,
    NodeDetail,
    NodeRow,
    RunRow,
    RunSpecIn,
    UnknownReporterRow,
)
from trainwarden.supervisor.api.explain import explain
from trainwarden.supervisor.daemon import goodput as gp
from trainwarden.supervisor.daemon import operations as ops
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.errors import NotFoundError, SupervisorError
from trainwarden.supervisor.model.cluster import NodeInfo, RunInfo, RunSpec
from trainwarden.supervisor.model.lifecycle import RunPhase
from trainwarden.supervisor.store.records import ActionStatus

VERSION = __version__
DETAIL_LIMIT = 20  # events and actions shown with one node
# how far back a node's own records are searched for when its drain took effect
DRAIN_SCAN = 50


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
        # node -> ((drained_by, drain_reason), drained_at): a drain's time is looked up in
        # the store once per drain, not on every listing of thousands of nodes
        self._drained_at: dict[str, tuple[tuple[str | None, str | None], float]] = {}

    # -- nodes -----------------------------------------------------------------------

    async def list_nodes(self) -> list[NodeRow]:
        rows = []
        for n in sorted(self.sup.state.nodes.values(), key=lambda n: n.name):
            rows.append(NodeRow(**self._node_fields(n, await self._drain_time(n))))
        return rows

    def _node_fields(self, n: NodeInfo, drained_at: float | None) -> dict[str, Any]:
        return {
            "name": n.name,
            "state": n.phase.value,
            "scheduler_state": n.scheduler_state,
            "run": n.run,
            "drained_by": n.drained_by,
            "drain_reason": n.drain_reason,
            "drained_at": drained_at,
            "last_heartbeat_at": n.last_heartbeat_at,
            "conditions": sorted(c.value for c in self.sup.book.types_of(n.name)),
        }

    async def _drain_time(self, n: NodeInfo) -> float | None:
        """When ``n``'s drain took effect: the store keeps no such column, so it is the newest
        succeeded drain action on the node (its finish), else, for a drain made outside
        trainwarden, the event that first saw the scheduler show it."""
        if not n.drained or n.drained_by is None:
            self._drained_at.pop(n.name, None)
            return None
        key = (n.drained_by, n.drain_reason)
        known = self._drained_at.get(n.name)
        if known is not None and known[0] == key:
            return known[1]
        st = self.sup.store
        found: float | None = None
        if n.drained_by != "external":
            recs = await st.call(
                st.store.actions, node=n.name, status=ActionStatus.SUCCEEDED, limit=DRAIN_SCAN
            )
            drain = next((r for r in recs if r.kind is ActionKind.DRAIN), None)
            if drain is not None:
                found = drain.finished_at or drain.ts
        if found is None:
            events = await st.call(
                st.store.events,
                node=n.name,
                kinds=[EventKind.CONDITION_CHANGED],
                limit=DRAIN_SCAN,
            )
            seen = next(
                (e for e in events if e.data.get("scheduler_state") in ("drained", "draining")),
                None,
            )
            found = seen.ts if seen is not None else None
        if found is not None:  # not found yet (the action still running): look again later
            self._drained_at[n.name] = (key, found)
        return found

    async def node_detail(self, node: str) -> NodeDetail:
        self._known_node(node)
        n = self.sup.state.nodes[node]
        st = self.sup.store
        events = await st.call(st.store.events, node=node, limit=DETAIL_LIMIT)
        actions = await st.call(st.store.actions, node=node, limit=DETAIL_LIMIT)
        conditions = sorted(self.sup.book.active(node), key=lambda c: (c.since, c.type.value))
        return NodeDetail(
            **self._node_fields(n, await self._drain_time(n)),
            last_report_at=n.last_report_at,
            returned_at=n.returned_at,
            condition_details=[
                ConditionRow(
                    type=c.type.value, since=c.since, reason=c.reason, evidence=list(c.evidence)
                )
                for c in conditions
            ],
            events=[EventRow.of(e) for e in reversed(events)],
            actions=[ActionRow.of(a) for a in reversed(actions)],
        )

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
        if spec.spares and spec.scheduler != "slurm":
            raise SupervisorError("spares need the slurm scheduler (an allocation to swap in)")
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
            spares=spec.spares,
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

    async def goodput(self, run: str) -> GoodputRow:
        """Where the run's wall time went (supervisor.goodput), from its recorded history."""
        info = self.sup.state.runs.get(run)
        if info is None:
            raise NotFoundError(f"unknown run {run!r}")
        g, adv = await gp.run_report(
            self.sup.store, info, self.sup.goodput, self.sup.progress.get(run), self.sup.clock.now()
        )
        return GoodputRow(
            run=run,
            start=g.start,
            end=g.end,
            wall_s=g.wall_s,
            ettr=g.ettr,
            buckets=dict(g.buckets),
            restart_overhead_s=g.restart_overhead_s,
            interruptions=g.interruptions,
            advice=adv.as_dict() if adv else None,
        )

    # -- events and actions ----------------------------------------------------------

    async def list_events(
        self,
        *,
        limit: int,
        node: str | None,
        run: str | None,
        kind: str | None,
        since_id: int | None,
        oldest_first: bool = False,
    ) -> list[EventRow]:
        st = self.sup.store
        events = await st.call(
            st.store.events,
            since_id=since_id,
            node=node,
            run=run,
            kinds=[kind] if kind else None,
            limit=limit,
            newest_first=not oldest_first,
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
