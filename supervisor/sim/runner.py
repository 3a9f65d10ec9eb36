"""Driving the real policy engine against the simulated cluster in virtual time.

A heap of timed events (fault starts and ends, detections, job exits, attempt starts,
engine ticks) is processed in order; no broker, no sleeps, so a month of a 2,048-node run
takes seconds. Node faults become conditions here (fault -> condition after the detection
delay, cleared when repaired): the minimal mapping the daemon's node-fault tracker does.
Every decision the engine returns is carried out like the daemon would, and recorded for
``--explain`` and the figures.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from policies.engine import PolicyEngine
from policies.explain import explain
from policies.model import (
    ActionKind,
    ClusterView,
    Condition,
    ConditionType,
    Decision,
    Event,
    EventKind,
    Verdict,
)
from policies.rules import Policy
from supervisor.sim.cluster import CONDITION_OF, RunState, SimCluster
from supervisor.sim.scenario import ASSUMPTION_SOURCES, FaultSpec, Scenario

TICK_S = 30.0
STRAGGLER_DETECT_S = 300.0
APPROVE_DELAY_S = 900.0  # approve mode: an operator answers within 15 min


@dataclass
class Logged:
    ts: float
    decision: Decision


@dataclass
class SimResult:
    scenario: str
    figures: dict[str, Any]
    decisions: list[Logged] = field(default_factory=list)
    events: dict[int, Event] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)

    def explain_lines(self) -> list[str]:
        out: list[str] = []
        for i, item in enumerate(self.decisions, 1):
            out += explain(item.decision, self.events, ident=f"D{i}", ts=item.ts)
        return out


class Simulation:
    def __init__(self, scenario: Scenario, policy: Policy, faults: list[FaultSpec]) -> None:
        self.sc = scenario
        self.engine = PolicyEngine(policy, scenario.mode)
        self.cluster = SimCluster(scenario.node_names(), scenario.run)
        self.faults = faults
        self.now = 0.0
        self._q: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._tick_at: float | None = None
        self.events: list[Event] = []
        self.by_id: dict[int, Event] = {}
        self.log: list[Logged] = []
        self.count: Counter[str] = Counter()
        self.blocks: Counter[str] = Counter()
        self.holds: Counter[str] = Counter()
        self.run_hung = False

    # -- plumbing -----------------------------------------------------------------------
    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._q, (t, next(self._seq), fn, args))

    def view(self) -> ClusterView:
        run = self.cluster.run
        return ClusterView(self.now, self.cluster.views, {run.spec.name: run.view()})

    def event(
        self, ekind: EventKind, node: str | None = None, message: str = "", **data: Any
    ) -> Event:
        ev = Event(
            self.now,
            ekind,
            node,
            self.cluster.run.spec.name if node is None else None,
            message,
            data,
            id=len(self.events) + 1,
        )
        self.events.append(ev)
        self.by_id[ev.id or 0] = ev
        return ev

    def run(self) -> SimResult:
        run = self.cluster.run
        for f in self.faults:
            self.at(f.at_s, self.fault_start, f)
        self.at(0.0, self.attempt_start, run.attempt)
        while self._q:
            t, _, fn, args = heapq.heappop(self._q)
            if t > self.sc.duration_s:
                break
            self.now = t
            fn(*args)
            self._schedule_tick()
        self.now = self.sc.duration_s
        run.advance(self.now)
        return self.result()

    def _schedule_tick(self) -> None:
        if not self.engine.pending() or (self._tick_at is not None and self._tick_at > self.now):
            return
        wake = self.engine.next_wakeup()
        t = self.now + TICK_S if wake is None else max(self.now, min(wake, self.now + TICK_S))
        self._tick_at = t
        self.at(t, self.tick)

    def tick(self) -> None:
        self._tick_at = None
        self.apply(self.engine.tick(self.view()))

    # -- faults -> conditions -----------------------------------------------------------
    def fault_start(self, f: FaultSpec) -> None:
        run = self.cluster.run
        if not f.nodes:  # run-level fault
            if f.kind == "crash":
                if f.step is None:
                    self.fail(f"crash ({f.label or 'software'})")
                else:
                    self.schedule_step_crash(f, run.attempt)
            elif f.kind == "hang":
                self.hang()
            return
        for name in f.nodes:
            node = self.cluster.nodes[name]
            node.faults.append(f)
            self.cluster.refresh(name)
            sev = "fatal" if f.kind in ("gpu-fatal", "node-dead") else "degraded"
            ev = self.event(
                EventKind.FAULT,
                name,
                f.label or f.kind,
                kind=f.kind,
                severity=sev,
                **({"cause": f.cause} if f.cause else {}),
            )
            self.apply(self.engine.on_event(ev, self.view(), self.events))
            delay = STRAGGLER_DETECT_S if f.kind == "straggler" else self.sc.run.detect_delay_s
            self.at(self.now + delay, self.detect, name, f, ev.id)
            if name in run.alloc:
                self.node_effect(f)
            if f.duration_s is not None:
                self.at(self.now + f.duration_s, self.fault_end, name, f)

    def node_effect(self, f: FaultSpec) -> None:
        run = self.cluster.run
        if f.effect == "slow":
            run.advance(self.now)
            self.cluster.recompute_slowdown()
        elif run.state is RunState.RUNNING:
            if f.effect == "crash":
                self.fail(f"{f.kind} on {', '.join(f.nodes[:3])}")
            elif f.effect == "hang":
                self.hang()

    def detect(self, name: str, f: FaultSpec, evidence: int | None) -> None:
        node = self.cluster.nodes[name]
        if f not in node.faults:
            return
        if f.cause:
            node.causes.add(f.cause)
        ctype = CONDITION_OF[f.kind]
        if ctype in node.detected:
            self.cluster.refresh(name)
            return
        node.detected.add(ctype)
        self.cluster.refresh(name)
        cond = Condition(
            name, ctype, True, f.label or f.kind, self.now, (evidence,) if evidence else ()
        )
        ev = self.event(
            EventKind.CONDITION_CHANGED,
            name,
            f"{ctype.value} set: {cond.reason}",
            condition=ctype.value,
            status=True,
        )
        cond = Condition(name, ctype, True, cond.reason, self.now, (*cond.evidence, ev.id or 0))
        self.apply(self.engine.on_condition(cond, self.view(), self.events))

    def fault_end(self, name: str, f: FaultSpec) -> None:
        node = self.cluster.nodes[name]
        if f not in node.faults:
            return
        node.faults.remove(f)
        node.causes = {x.cause for x in node.faults if x.cause}
        ctype = CONDITION_OF[f.kind]
        still = any(CONDITION_OF[x.kind] is ctype for x in node.faults)
        self.cluster.refresh(name)
        if f.effect == "slow":
            self.cluster.run.advance(self.now)
            self.cluster.recompute_slowdown()
        if ctype in node.detected and not still:
            node.detected.discard(ctype)
            self.cluster.refresh(name)
            ev = self.event(
                EventKind.CONDITION_CHANGED,
                name,
                f"{ctype.value} cleared: repaired",
                condition=ctype.value,
                status=False,
            )
            cond = Condition(name, ctype, False, "repaired", self.now, (ev.id or 0,))
            self.apply(self.engine.on_condition(cond, self.view(), self.events))
        self.retry_pending()

    # -- the run ------------------------------------------------------------------------
    def fail(self, why: str) -> None:
        run = self.cluster.run
        if run.state not in (RunState.RUNNING, RunState.HUNG):
            return
        run.advance(self.now)
        run.failure_steps.append(run.step())
        step = run.step()
        run.lose(self.now)
        run.set_state(self.now, RunState.DOWN)
        self.at(self.now + self.sc.run.job_exit_delay_s, self.job_exit, run.attempt, why, step)

    def job_exit(self, attempt: int, why: str, step: int) -> None:
        run = self.cluster.run
        ev = self.event(
            EventKind.ATTEMPT_ENDED,
            None,
            f"attempt {attempt} failed: {why}",
            attempt=attempt,
            failed=True,
            step=step,
        )
        if run.attempt == attempt:
            self.apply(self.engine.on_event(ev, self.view(), self.events))

    def hang(self) -> None:
        run = self.cluster.run
        if run.state is not RunState.RUNNING:
            return
        run.advance(self.now)
        run.set_state(self.now, RunState.HUNG)
        self.at(self.now + self.sc.run.hang_detect_s, self.hang_detected, run.attempt)

    def hang_detected(self, attempt: int) -> None:
        run = self.cluster.run
        if run.attempt != attempt or run.state is not RunState.HUNG:
            return
        self.run_hung = True
        ev = self.event(
            EventKind.RUN_PROGRESS_STALLED,
            None,
            f"no step progress since step {run.step()}",
            step=run.step(),
        )
        cond = Condition(
            run.spec.name,
            ConditionType.RUN_HUNG,
            True,
            f"no progress for {self.sc.run.hang_detect_s:g}s",
            self.now,
            (ev.id or 0,),
        )
        self.apply(self.engine.on_condition(cond, self.view(), self.events))

    def schedule_step_crash(self, f: FaultSpec, attempt: int) -> None:
        run = self.cluster.run
        target = (f.step or 0) * run.spec.step_s
        if run.state is RunState.RUNNING and run.progress < target:
            self.at(self.now + (target - run.progress) * run.slowdown, self.step_crash, f, attempt)

    def step_crash(self, f: FaultSpec, attempt: int) -> None:
        if self.cluster.run.attempt == attempt:
            self.fail(f"crash at step {f.step} ({f.label or 'software'})")

    def restart(self, exclude: tuple[str, ...]) -> None:
        run = self.cluster.run
        if run.state in (RunState.RUNNING, RunState.HUNG):
            run.lose(self.now)
        run.advance(self.now)
        run.attempt += 1
        run.restarts += 1
        if self.run_hung:
            self.run_hung = False
            self.apply(
                self.engine.on_condition(
                    Condition(run.spec.name, ConditionType.RUN_HUNG, False, "restarted", self.now),
                    self.view(),
                    self.events,
                )
            )
        if self.cluster.allocate(self.now, exclude):
            run.set_state(self.now, RunState.RESTARTING)
            self.at(self.now + self.sc.run.restart_cost_s, self.attempt_start, run.attempt)
        else:
            run.set_state(self.now, RunState.PENDING)

    def retry_pending(self) -> None:
        run = self.cluster.run
        if run.state is RunState.PENDING and self.cluster.allocate(self.now, ()):
            run.set_state(self.now, RunState.RESTARTING)
            self.at(self.now + self.sc.run.restart_cost_s, self.attempt_start, run.attempt)

    def attempt_start(self, attempt: int) -> None:
        run = self.cluster.run
        if run.attempt != attempt or run.state not in (RunState.RESTARTING, RunState.RUNNING):
            return
        run.set_state(self.now, RunState.RUNNING)
        if attempt > 1:
            run.restart_times.append(self.now)
        self.cluster.recompute_slowdown()
        self.event(
            EventKind.RUN_STARTED,
            None,
            f"attempt {attempt} running on {len(run.alloc)} nodes from step {run.step()}",
            attempt=attempt,
        )
        for f in self.faults:
            if (
                not f.nodes
                and f.kind == "crash"
                and f.step is not None
                and f.at_s <= self.now
                and (f.repeat or attempt == 1)
            ):
                self.schedule_step_crash(f, attempt)
        for name in run.alloc:  # a bad node that was not drained fails the new attempt
            for f in self.cluster.nodes[name].faults:
                if f.effect in ("crash", "hang"):
                    self.node_effect(f)
                    return

    # -- decisions ----------------------------------------------------------------------
    def apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            self.log.append(Logged(self.now, d))
            failing = [v.guard for v in d.guards if not v.passed]
            if d.verdict is Verdict.BLOCK and failing[:1] == ["still-needed"]:
                self.count["dropped_after_hold"] += 1
            elif d.verdict is Verdict.BLOCK:
                self.blocks.update(failing[:1])
            elif d.verdict is Verdict.HOLD:
                self.holds.update(failing[:1])
            elif d.verdict is Verdict.DRY_RUN:
                self.count[f"dry_run_{d.request.kind.value}"] += 1
            elif d.verdict is Verdict.QUEUED:
                self.count["queued"] += 1
                self.at(self.now + APPROVE_DELAY_S, self.approve, d)
            elif d.verdict is Verdict.ALLOW:
                ok = self.execute(d)
                self.engine.record_result(d, ok, self.now)

    def execute(self, d: Decision) -> bool:
        req = d.request
        run = self.cluster.run
        if req.kind is ActionKind.DRAIN and req.node:
            node = self.cluster.nodes[req.node]
            node.drained, node.by_trainwarden = True, True
            self.cluster.refresh(req.node)
            self.count["drains"] += 1
            if not node.local_fault():
                self.count["false_drains"] += 1
        elif req.kind is ActionKind.RESTART_RUN:
            self.count["restarts"] += 1
            self.restart(req.exclude)
        elif req.kind in (ActionKind.VET, ActionKind.UNDRAIN) and req.node:
            node = self.cluster.nodes[req.node]
            self.count["vets"] += 1
            if req.kind is ActionKind.VET and node.faults:
                self.count["vets_failed"] += 1
                return False
            node.drained, node.by_trainwarden, node.returned_at = False, False, self.now
            self.cluster.refresh(req.node)
            self.count["returned"] += 1
            self.retry_pending()
        elif req.kind is ActionKind.CHECKPOINT_NOW:
            if run.state is not RunState.RUNNING:
                return False
            run.advance(self.now)
            self.at(self.now + self.sc.run.checkpoint_save_s, self.checkpoint_saved, run.attempt)
        elif req.kind is ActionKind.ALERT:
            self.count["alerts"] += 1
        return True

    def approve(self, d: Decision) -> None:
        """Approve mode: a simulated operator approves each queued decision after a delay."""
        self.apply([self.engine.resolve(d, True, self.view(), who="sim-operator")])

    def checkpoint_saved(self, attempt: int) -> None:
        run = self.cluster.run
        if run.attempt != attempt or run.state is not RunState.RUNNING:
            return
        run.advance(self.now)
        run.ckpt = run.progress
        run.checkpoints += 1
        self.count["checkpoints_now"] += 1
        ev = self.event(
            EventKind.CHECKPOINT_SAVED, None, f"checkpoint at step {run.step()}", step=run.step()
        )
        self.apply(self.engine.on_event(ev, self.view(), self.events))

    # -- figures ------------------------------------------------------------------------
    def result(self) -> SimResult:
        run = self.cluster.run
        wall = self.sc.duration_s
        spec = self.sc.run
        figures: dict[str, Any] = {
            "scenario": self.sc.name,
            "mode": self.sc.mode.value,
            "cluster_nodes": self.sc.cluster_nodes,
            "run_nodes": spec.nodes,
            "duration_h": round(wall / 3600, 3),
            "faults": sum(max(1, len(f.nodes)) for f in self.faults),
            "drains": self.count["drains"],
            "false_drains": self.count["false_drains"],
            "restarts": self.count["restarts"],
            "incidents": len(self.engine.incidents()),
            "incident_kinds": dict(Counter(i.kind.value for i in self.engine.incidents())),
            "guard_blocks": dict(sorted(self.blocks.items())),
            "guard_holds": dict(sorted(self.holds.items())),
            "vets": self.count["vets"],
            "returned_to_service": self.count["returned"],
            "alerts": self.count["alerts"],
            "dropped_after_hold": self.count["dropped_after_hold"],
            "checkpoints_now": self.count["checkpoints_now"],
            "decisions": len(self.log),
            "lost_work_h": round(run.lost_work_s / 3600, 3),
            "hours_by_state": {k: round(v / 3600, 2) for k, v in sorted(run.time_in.items())},
            "slowdown_loss_h": round(
                (run.time_in.get("running", 0.0) - run.progress - run.lost_work_s) / 3600, 3
            ),
            "productive_h": round(run.progress / 3600, 3),
            "lost_node_hours": round(spec.nodes * (wall - run.progress) / 3600, 1),
            "ettr": round(run.progress / wall, 4) if wall > 0 else 0.0,
            "final_state": run.state.value,
            "assumptions": {
                "checkpoint_interval_s": spec.checkpoint_interval_s,
                "restart_cost_s": spec.restart_cost_s,
                "detect_delay_s": spec.detect_delay_s,
                "job_exit_delay_s": spec.job_exit_delay_s,
                "hang_detect_s": spec.hang_detect_s,
                "sources": ASSUMPTION_SOURCES,
            },
        }
        if self.sc.mode.value == "dry-run":
            figures["dry_run"] = {
                k[8:]: v for k, v in self.count.items() if k.startswith("dry_run_")
            }
        if self.sc.mode.value == "approve":
            figures["queued"] = self.count["queued"]
            figures["approve_delay_s"] = APPROVE_DELAY_S
        mismatches = [
            f"{k}: expected {v}, got {figures.get(k)}"
            for k, v in self.sc.expect.items()
            if figures.get(k) != v
        ]
        figures["expectations"] = {"checked": len(self.sc.expect), "failed": mismatches}
        return SimResult(self.sc.name, figures, self.log, self.by_id, mismatches)
