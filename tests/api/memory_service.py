"""An in-memory OperatorService for testing the HTTP layer and the CLI (test-only).

It keeps nodes, runs, events and actions in lists and applies operator actions the
way the daemon would at the level the API can see (a drain makes the node drained by
the operator and records an action and an event). The daemon's real service is
tested end to end by the lead's tests; this one exists so the API and CLI tests
exercise real HTTP against a service whose state they can inspect.
"""

from __future__ import annotations

from typing import Any, Literal

from trainwarden.policies.model import ActionKind, Actor, EventKind, Verdict
from trainwarden.supervisor.api.contract import (
    ActionRow,
    ConditionRow,
    EventRow,
    Explanation,
    GoodputRow,
    NodeDetail,
    NodeRow,
    RunRow,
    RunSpecIn,
    UnknownReporterRow,
)
from trainwarden.supervisor.errors import NotFoundError, SchedulerError, SupervisorError
from trainwarden.supervisor.store.records import ActionStatus


class MemoryService:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now
        self.unknown: list[UnknownReporterRow] = []  # names that published as no node
        self.nodes: dict[str, NodeRow] = {}
        self.runs: dict[str, RunRow] = {}
        self.specs: dict[str, RunSpecIn] = {}
        self.events: list[EventRow] = []
        self.actions: list[ActionRow] = []
        self.conditions: dict[str, list[ConditionRow]] = {}  # node -> conditions now true
        self.ok = True
        self.fail_scheduler = False
        self.calls: list[tuple[str, dict[str, Any]]] = []

    # --- seeding --------------------------------------------------------------------------

    def add_node(self, name: str, state: str = "healthy", **fields: Any) -> NodeRow:
        row = NodeRow(name=name, state=state, last_heartbeat_at=self.now - 3, **fields)  # type: ignore[arg-type]
        self.nodes[name] = row
        return row

    def add_event(self, kind: str, message: str, **fields: Any) -> EventRow:
        self.now += 1
        row = EventRow(id=len(self.events) + 1, ts=self.now, kind=kind, message=message, **fields)
        self.events.append(row)
        return row

    def add_action(self, **fields: Any) -> ActionRow:
        self.now += 1
        row = ActionRow(id=len(self.actions) + 1, ts=self.now, **fields)
        self.actions.append(row)
        return row

    # --- OperatorService ------------------------------------------------------------------

    async def list_nodes(self) -> list[NodeRow]:
        return sorted(self.nodes.values(), key=lambda n: n.name)

    async def list_unknown_reporters(self) -> list[UnknownReporterRow]:
        return list(self.unknown)

    async def node_detail(self, node: str) -> NodeDetail:
        self.calls.append(("node_detail", {"node": node}))
        row = self._node(node)
        events = [e for e in self.events if e.node == node][-20:]
        actions = [a for a in self.actions if a.node == node][-20:]
        return NodeDetail(
            **row.model_dump(),
            condition_details=self.conditions.get(node, []),
            events=events,
            actions=actions,
        )

    def _node(self, node: str) -> NodeRow:
        if node not in self.nodes:
            raise NotFoundError(f"unknown node {node!r}")
        return self.nodes[node]

    def _operator_action(self, kind: ActionKind, reason: str, who: str, **target: Any) -> ActionRow:
        event = self.add_event(
            str(EventKind.ACTION), f"{kind} by operator {who}: {reason}", **target
        )
        status = ActionStatus.FAILED if self.fail_scheduler else ActionStatus.SUCCEEDED
        return self.add_action(
            kind=kind,
            actor=Actor.OPERATOR,
            who=who,
            reason=reason,
            verdict=Verdict.ALLOW,
            status=status,
            evidence=[event.id],
            result="scheduler refused" if self.fail_scheduler else "done",
            **target,
        )

    async def drain(self, node: str, reason: str, who: str) -> ActionRow:
        self.calls.append(("drain", {"node": node, "reason": reason, "who": who}))
        row = self._node(node)
        if row.state == "drained":
            raise SupervisorError(f"node {node!r} is already drained ({row.drain_reason})")
        self.nodes[node] = row.model_copy(
            update={
                "state": "drained",
                "drained_by": "operator",
                "drain_reason": reason,
                "drained_at": self.now + 2,  # when the action below finishes
            }
        )
        return self._operator_action(ActionKind.DRAIN, reason, who, node=node)

    async def undrain(self, node: str, reason: str, who: str) -> ActionRow:
        self.calls.append(("undrain", {"node": node, "reason": reason, "who": who}))
        row = self._node(node)
        if row.state != "drained":
            raise SupervisorError(f"node {node!r} is not drained (it is {row.state})")
        self.nodes[node] = row.model_copy(
            update={
                "state": "healthy",
                "drained_by": None,
                "drain_reason": None,
                "drained_at": None,
            }
        )
        return self._operator_action(ActionKind.UNDRAIN, reason, who, node=node)

    async def list_runs(self) -> list[RunRow]:
        return sorted(self.runs.values(), key=lambda r: r.name)

    async def add_run(self, spec: RunSpecIn, who: str) -> RunRow:
        self.calls.append(("add_run", {"spec": spec, "who": who}))
        if spec.name in self.runs:
            raise SupervisorError(f"a run named {spec.name!r} already exists")
        row = RunRow(
            name=spec.name,
            scheduler=spec.scheduler,
            state="pending",
            attempt=0,
            restarts=0,
            target_step=spec.target_step,
        )
        self.runs[spec.name] = row
        self.specs[spec.name] = spec
        return row

    async def restart_run(self, run: str, reason: str, who: str) -> ActionRow:
        self.calls.append(("restart_run", {"run": run, "reason": reason, "who": who}))
        if run not in self.runs:
            raise NotFoundError(f"unknown run {run!r}")
        if self.fail_scheduler:
            raise SchedulerError("sbatch: error: Batch job submission failed", retryable=True)
        row = self.runs[run]
        self.runs[run] = row.model_copy(
            update={"attempt": row.attempt + 1, "restarts": row.restarts + 1, "state": "restarting"}
        )
        return self._operator_action(ActionKind.RESTART_RUN, reason, who, run=run)

    async def goodput(self, run: str) -> GoodputRow:
        if run not in self.runs:
            raise NotFoundError(f"unknown run {run!r}")
        return GoodputRow(
            run=run,
            start=self.now - 100,
            end=self.now,
            wall_s=100.0,
            ettr=0.9,
            buckets={"productive": 90.0, "rework": 10.0},
        )

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
        query = {"limit": limit, "node": node, "run": run, "kind": kind, "since_id": since_id}
        if oldest_first:  # recorded only when asked, so older tests' expectations hold
            query["oldest_first"] = True
        self.calls.append(("list_events", query))
        rows = [
            e
            for e in (self.events if oldest_first else reversed(self.events))
            if (node is None or e.node == node)
            and (run is None or e.run == run)
            and (kind is None or e.kind == kind)
            and (since_id is None or e.id > since_id)
        ]
        return rows[:limit]

    async def list_actions(self, *, status: str | None, limit: int) -> list[ActionRow]:
        rows = [a for a in reversed(self.actions) if status is None or a.status == status]
        return rows[:limit]

    def _action(self, action_id: int) -> ActionRow:
        for a in self.actions:
            if a.id == action_id:
                return a
        raise NotFoundError(f"unknown action {action_id}")

    async def explain(self, ident: int, what: Literal["event", "action"]) -> Explanation:
        if what == "action":
            action = self._action(ident)
            events = [e for e in self.events if e.id in action.evidence]
            by = (
                f"operator {action.who}"
                if action.actor == Actor.OPERATOR
                else f"rule {action.rule}"
            )
            lines = [
                f"{action.kind} decided by {by} because {action.reason}",
                f"verdict {action.verdict}, status {action.status}",
            ]
            return Explanation(subject=f"action {ident}", lines=lines, action=action, events=events)
        for e in self.events:
            if e.id == ident:
                led = [a for a in self.actions if ident in a.evidence]
                lines = [f"{e.kind}: {e.message}"] + [
                    f"led to action {a.id} ({a.kind})" for a in led
                ]
                return Explanation(
                    subject=f"event {ident}",
                    lines=lines,
                    action=led[0] if led else None,
                    events=[e],
                    followed=led,
                )
        raise NotFoundError(f"unknown event {ident}")

    def _decide(self, action_id: int, status: ActionStatus, result: str) -> ActionRow:
        action = self._action(action_id)
        if action.status != ActionStatus.PENDING or action.verdict != Verdict.QUEUED:
            raise SupervisorError(
                f"action {action_id} is not awaiting approval (status {action.status})"
            )
        updated = action.model_copy(update={"status": status, "result": result})
        self.actions[self.actions.index(action)] = updated
        return updated

    async def approve(self, action_id: int, who: str) -> ActionRow:
        return self._decide(action_id, ActionStatus.APPROVED, f"approved by {who}")

    async def reject(self, action_id: int, reason: str, who: str) -> ActionRow:
        return self._decide(action_id, ActionStatus.REJECTED, f"rejected by {who}: {reason}")

    def status(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "db": self.ok,
            "broker": True,
            "leader": True,
            "started_at": 1_800_000_000.0,
            "version": "0.1.0",
        }


def seeded() -> MemoryService:
    """A small cluster: four nodes, one run, a fault event and a queued rule action."""
    svc = MemoryService()
    svc.add_node("nid001", run="pretrain", scheduler_state="allocated")
    svc.add_node("nid002", run="pretrain", scheduler_state="allocated")
    svc.add_node(
        "nid003",
        state="failed",
        conditions=["GpuFatal"],
        scheduler_state="allocated",
        run="pretrain",
    )
    svc.add_node(
        "nid004",
        state="drained",
        drained_by="external",
        drain_reason="maintenance",
        drained_at=svc.now - 7200,
        scheduler_state="drained",
    )
    svc.runs["pretrain"] = RunRow(
        name="pretrain",
        scheduler="slurm",
        state="running",
        attempt=2,
        restarts=1,
        nodes=["nid001", "nid002", "nid003"],
        last_step=1200,
        target_step=10000,
        last_checkpoint_step=1000,
        resumed_from_step=500,
    )
    fault = svc.add_event(
        "fault",
        "XID 79 on gpu 2: GPU has fallen off the bus",
        node="nid003",
        data={"code": 79, "gpu": 2},
    )
    svc.conditions["nid003"] = [
        ConditionRow(type="GpuFatal", since=fault.ts, reason=fault.message, evidence=[fault.id])
    ]
    svc.add_event("run-started", "attempt 2 started", run="pretrain")
    svc.add_action(
        kind=ActionKind.DRAIN,
        actor=Actor.RULE,
        rule="gpu-fatal-drain",
        node="nid003",
        run="pretrain",
        reason="GpuFatal: XID 79 on gpu 2",
        evidence=[fault.id],
        guards=[{"guard": "max-drains-per-window", "passed": True, "detail": "0/4"}],
        verdict=Verdict.QUEUED,
        status=ActionStatus.PENDING,
    )
    return svc
