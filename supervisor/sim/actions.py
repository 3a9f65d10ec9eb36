"""Carrying out the engine's decisions on the simulated cluster, as the daemon would.

The simulator's stand-in for the scheduler and the executor; what to do and when a vetted
node passes come from the decision core (``supervisor.decide``). A drain takes the node out of
scheduling, a restart resubmits the run without the excluded nodes, ``vet`` starts vetting
and the node returns to service (``undrain``, which also resets the node health tracker's
sticky faults) once it has reported for the vetting period with no condition set.
"""

from __future__ import annotations

from trainwarden.policies.model import (
    ActionKind,
    Actor,
    Decision,
    Event,
    EventKind,
    Verdict,
)
from trainwarden.supervisor.decide.core import VetOutcome
from trainwarden.supervisor.detectors.node_faults import Observation
from trainwarden.supervisor.sim.cluster import RunState
from trainwarden.supervisor.sim.host import Logged, SimHost
from trainwarden.supervisor.sim.scenario import APPROVE_DELAY_S


class Actions:
    def __init__(self, sim: SimHost) -> None:
        self.sim = sim
        self.vetting_nodes: set[str] = set()

    def apply(self, decisions: list[Decision]) -> None:
        """Supervisor._execute: record every decision first, then carry out the allowed ones."""
        sim = self.sim
        for d in decisions:
            sim.log.append(Logged(sim.now, d))
            failing = [v.guard for v in d.guards if not v.passed]
            if d.verdict is Verdict.BLOCK and failing[:1] == ["still-needed"]:
                sim.count["dropped_after_hold"] += 1
            elif d.verdict is Verdict.BLOCK:
                sim.blocks.update(failing[:1])
            elif d.verdict is Verdict.HOLD:
                sim.holds.update(failing[:1])
                if d.request.kind is ActionKind.RESTART_RUN:
                    sim.spans.hold(sim.now)
            elif d.verdict is Verdict.DRY_RUN:
                sim.count[f"dry_run_{d.request.kind.value}"] += 1
            elif d.verdict is Verdict.QUEUED:
                sim.count["queued"] += 1
                if d.request.kind is ActionKind.RESTART_RUN:
                    sim.spans.hold(sim.now)
                sim.at(sim.now + APPROVE_DELAY_S, self.approve, d)
        for d in decisions:
            if d.verdict is Verdict.ALLOW:
                ok = self.execute(d)
                sim.engine.record_result(d, ok, sim.now)

    def execute(self, d: Decision) -> bool:
        sim = self.sim
        req = d.request
        run = sim.cluster.run
        if req.kind is ActionKind.DRAIN and req.node:
            node = sim.cluster.nodes[req.node]
            node.drained, node.by_trainwarden = True, req.actor is Actor.RULE
            node.vetting_since = None
            self.vetting_nodes.discard(req.node)
            sim.cluster.refresh(req.node)
            sim.count["drains"] += 1
            if not node.local_fault():
                sim.count["false_drains"] += 1
        elif req.kind is ActionKind.RESTART_RUN:
            sim.count["restarts"] += 1
            sim.spans.released(sim.now)
            sim.restart(req.exclude)
        elif req.kind is ActionKind.VET and req.node:
            node = sim.cluster.nodes[req.node]
            if not node.by_trainwarden and req.actor is not Actor.OPERATOR:
                return False  # only an operator vets what trainwarden did not drain
            sim.count["vets"] += 1
            node.vetting_since = sim.now
            self.vetting_nodes.add(req.node)
            sim.tick_after(sim.settings.vet_period_s)
        elif req.kind is ActionKind.UNDRAIN and req.node:
            self.undrain(req.node)
        elif req.kind is ActionKind.CHECKPOINT_NOW:
            if run.state is not RunState.RUNNING:
                return False
            run.advance(sim.now)
            sim.at(sim.now + sim.sc.run.checkpoint_save_s, self.checkpoint_saved, run.attempt)
        elif req.kind is ActionKind.ALERT:
            sim.count["alerts"] += 1
        return True

    def undrain(self, name: str) -> None:
        """Back to service; the core forgets the node's sticky faults, as in the daemon."""
        sim = self.sim
        node = sim.cluster.nodes[name]
        node.drained, node.by_trainwarden, node.returned_at = False, False, sim.now
        node.vetting_since = None
        self.vetting_nodes.discard(name)
        sim.core.returned(name, sim.now)
        sim.cluster.refresh(name)
        sim.count["returned"] += 1
        sim.retry_pending()

    def vetting(self) -> None:
        """Nodes being vetted, judged by the core as the daemon's upkeep does."""
        sim = self.sim
        for name in sorted(self.vetting_nodes):
            node = sim.cluster.nodes[name]
            if node.vetting_since is None:
                continue
            fresh = node.name in sim.agents.up  # an agent that is up reports every interval
            verdict = sim.core.vet(name, node.vetting_since, fresh, sim.now)
            if verdict.outcome is VetOutcome.FAILED:
                node.vetting_since = None
                self.vetting_nodes.discard(name)
                sim.count["vets_failed"] += 1
                sim.record(verdict.failure_event(sim.now, name))
            elif verdict.outcome is VetOutcome.PASSED:
                d = sim.core.vet_passed(name)
                sim.log.append(Logged(sim.now, d))
                self.undrain(node.name)
                sim.engine.record_result(d, True, sim.now)

    def approve(self, d: Decision) -> None:
        """Approve mode: a simulated operator approves each queued decision after a delay."""
        sim = self.sim
        self.apply([sim.engine.resolve(d, True, sim.view(), who="sim-operator")])

    def checkpoint_saved(self, attempt: int) -> None:
        sim = self.sim
        run = sim.cluster.run
        if run.attempt != attempt or run.state is not RunState.RUNNING:
            return
        run.advance(sim.now)
        run.ckpt = run.progress
        run.checkpoints += 1
        run.ckpt_log.append((run.step(), sim.now))
        sim.count["checkpoints_now"] += 1
        ev = Event(
            sim.now,
            EventKind.CHECKPOINT_SAVED,
            run=run.spec.name,
            message=f"checkpoint of step {run.step()} saved",
            data={"step": run.step()},
        )
        sim.observe([Observation(ev)])
