"""Driving the daemon's decision core against the simulated cluster in virtual time.

A heap of timed events (fault starts and ends, agent messages, job exits, attempt starts,
ticks) is processed in order; no broker, no sleeps, so a month of a 2,048-node run takes
seconds. Node faults become what the agents would publish (``agents.py``) and go through
the daemon's own decision core (``supervisor.decide``: detectors, condition book, policy
engine, vetting); the run's steps go to the core's progress tracker, which is what
declares a hang. Every decision is carried out on the virtual cluster (``actions.py``, the
simulator's stand-in for the scheduler) and recorded for ``--explain``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from trainwarden.health.report import StepSample
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import ClusterView, ConditionType, Event, EventKind
from trainwarden.policies.rules import Policy
from trainwarden.supervisor.decide.core import DecisionCore
from trainwarden.supervisor.decide.settings import DetectorSettings
from trainwarden.supervisor.detectors.node_faults import Observation
from trainwarden.supervisor.sim.accounting import Spans
from trainwarden.supervisor.sim.actions import Actions
from trainwarden.supervisor.sim.agents import XID_REPORT_DELAY_S, Agents, agent_fault
from trainwarden.supervisor.sim.cluster import RunState, SimCluster
from trainwarden.supervisor.sim.events import EventLog
from trainwarden.supervisor.sim.figures import SimResult, result
from trainwarden.supervisor.sim.host import Logged
from trainwarden.supervisor.sim.scenario import FaultSpec, Scenario

TICK_S = 30.0  # while the engine waits on time (holds, incidents), tick it this often
STRAGGLER_DETECT_S = 300.0
EVENT_FAULTS = frozenset({"xid", "gpu-lost", "gpu-missing", "ecc-dbe"})  # published at once


class Simulation:
    def __init__(self, scenario: Scenario, policy: Policy, faults: list[FaultSpec]) -> None:
        self.sc = scenario
        spec = scenario.run
        self.engine = PolicyEngine(policy, scenario.mode)
        self.settings = replace(
            DetectorSettings(),
            hang_floor_s=spec.hang_detect_s,
            startup_timeout_s=spec.startup_timeout_s,
        )
        self.core = DecisionCore(self.settings, self.engine)  # the daemon's own decision core
        self.events = EventLog()
        self.agents = Agents(self.core.nodes, self.settings.heartbeat_interval_s)
        self.cluster = SimCluster(scenario.node_names(), spec, self.detected)
        self.faults = faults
        self.now = 0.0
        self._q: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._tick_at: float | None = None
        self.log: list[Logged] = []
        self.count: Counter[str] = Counter()
        self.blocks: Counter[str] = Counter()
        self.holds: Counter[str] = Counter()
        self.transitions: Counter[str] = Counter()  # conditions set, by type
        self.flagged: set[str] = set()  # stragglers flagged
        self.resume_step = 0  # the step the current attempt resumed from
        self.fed: tuple[int, int] = (0, -1)  # (attempt, step) last reported to the tracker
        self.spans = Spans()  # the run's history, as the daemon records it (goodput)
        self.actions = Actions(self)

    # -- plumbing -----------------------------------------------------------------------
    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._q, (t, next(self._seq), fn, args))

    def detected(self, name: str) -> tuple[frozenset[ConditionType], frozenset[str]]:
        causes = self.core.nodes.node(name).causes if name in self.agents.known else ()
        return self.core.book.types_of(name), frozenset(causes)

    def view(self) -> ClusterView:
        run = self.cluster.run
        return ClusterView(self.now, self.cluster.views, {run.spec.name: run.view()})

    def record(self, ev: Event) -> Event:
        """An event the daemon records but does not detect on (run submitted, vetting)."""
        return self.events.record([ev])[0]

    def observe(self, obs: Sequence[Observation]) -> None:
        """Supervisor.observe: events get ids, conditions move, the policy decides."""
        if not obs:
            return
        events = self.events.record([o.event for o in obs])
        changed = self.core.conditions(obs, [e.id or 0 for e in events])
        for cond in changed:
            if cond.status:
                self.transitions[cond.type.value] += 1
        if any(c.status for c in changed) or any(e.kind is EventKind.ATTEMPT_ENDED for e in events):
            self.spans.detected(self.now)
        for name in {e.node for e in events if e.node and e.node in self.cluster.nodes}:
            self.cluster.refresh(name)
        self.actions.apply(self.core.decide(changed, events, self.view(), self.events.events))

    def run(self) -> SimResult:
        run = self.cluster.run
        for f in self.faults:
            self.at(f.at_s, self.fault_start, f)
        self.core.progress.start_attempt(run.spec.name, run.attempt, 0.0)
        self.spans.submitted(run.attempt, 0.0, 0, run.spec.step_s)
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
        return result(self)

    def _schedule_tick(self) -> None:
        if not self.engine.pending() or (self._tick_at is not None and self._tick_at > self.now):
            return
        wake = self.engine.next_wakeup()
        if wake is None:
            t = self.now + TICK_S
        elif wake <= self.now:
            # a hold whose time has come but which the engine kept (a guard that still says
            # no at the time its hold named): the daemon looks again on its next tick, and so
            # does the simulator, instead of spinning at one instant
            t = self.now + self.settings.tick_s
        else:
            t = min(wake, self.now + TICK_S)
        self._tick_at = t
        self.at(t, self.tick, True)

    def tick(self, engine_tick: bool = False) -> None:
        """Supervisor.tick: heartbeats and steps so far, time-based detectors, vetting, policy."""
        if engine_tick:
            self._tick_at = None
        self.feed_steps()
        obs = self.agents.heartbeats(self.now)
        obs += self.core.detect(self.now)
        self.observe(obs)
        self.actions.vetting()
        self.actions.apply(self.engine.tick(self.view()))

    def tick_after(self, delay_s: float) -> None:
        """A detector deadline: the daemon notices it on its first tick after ``delay_s``."""
        self.at(self.now + delay_s + self.settings.tick_s, self.tick, False)

    # -- faults -> what the agents publish ------------------------------------------------
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
            self.observe(self.agents.hello(name, self.now))
            self.agent_sees(name, f)
            if name in run.alloc:
                self.node_effect(f)
            if f.duration_s is not None:
                self.at(self.now + f.duration_s, self.fault_end, name, f)

    def agent_sees(self, name: str, f: FaultSpec) -> None:
        if f.kind == "straggler":
            self.at(self.now + STRAGGLER_DETECT_S, self.straggler_flag, name, f)
            return
        if f.kind == "node-dead":
            self.observe(self.agents.die(name, self.now))
            will = self.sc.run.will_delay_s if f.will_after_s is None else f.will_after_s
            self.at(self.now + will, self.will, name, f)
            self.tick_after(will + self.settings.will_confirm_s)
            self.tick_after(self.settings.heartbeat_limit_s())
            return
        fault = agent_fault(f)
        if fault is not None and fault.kind in EVENT_FAULTS:
            self.at(self.now + XID_REPORT_DELAY_S, self.fault_event, name, f)
        self.at(self.now + self.sc.run.detect_delay_s, self.report, name)

    def fault_event(self, name: str, f: FaultSpec) -> None:
        fault = agent_fault(f)
        if fault is not None and f in self.cluster.nodes[name].faults:
            self.observe(self.agents.fault_event(name, fault, self.now))

    def report(self, name: str) -> None:
        """The node's next health report, showing the faults it has now."""
        found = [x for x in map(agent_fault, self.cluster.nodes[name].faults) if x is not None]
        self.observe(self.agents.report(name, list(dict.fromkeys(found)), self.now))

    def will(self, name: str, f: FaultSpec) -> None:
        if f in self.cluster.nodes[name].faults:
            self.observe(self.agents.will(name, self.now))

    def straggler_flag(self, name: str, f: FaultSpec) -> None:
        """The sim's own straggler detection (the step-time detector is not driven yet)."""
        if f not in self.cluster.nodes[name].faults or name in self.flagged:
            return
        self.flagged.add(name)
        why = f"step time {f.slowdown:g}x its peers' for {STRAGGLER_DETECT_S:g} s" + (
            f" ({f.label})" if f.label else ""
        )
        ev = Event(
            self.now,
            EventKind.STRAGGLER_FLAGGED,
            node=name,
            message=why,
            data={"slowdown": f.slowdown},
        )
        self.observe([Observation(ev, name, ConditionType.STRAGGLER, True, why)])

    def fault_end(self, name: str, f: FaultSpec) -> None:
        node = self.cluster.nodes[name]
        if f not in node.faults:
            return
        node.faults.remove(f)
        self.cluster.refresh(name)
        kinds = {x.kind for x in node.faults}
        if f.effect == "slow":
            self.cluster.run.advance(self.now)
            self.cluster.recompute_slowdown()
        if f.kind == "straggler" and name in self.flagged and "straggler" not in kinds:
            self.flagged.discard(name)
            ev = Event(
                self.now,
                EventKind.STRAGGLER_CLEARED,
                node=name,
                message="step time back in line with its peers",
            )
            self.observe([Observation(ev, name, ConditionType.STRAGGLER, False, "repaired")])
        elif f.kind == "node-dead" and "node-dead" not in kinds:
            self.observe(self.agents.start(name, self.now))  # back online
            self.report(name)
        elif f.kind == "gpu-fatal" and name in self.agents.up:
            self.observe(self.agents.stop(name, self.now))  # the repair reboots the node
            self.observe(self.agents.start(name, self.now))
            self.report(name)
        elif f.kind != "straggler":
            self.report(name)
        self.retry_pending()

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

    # -- the run and its progress ---------------------------------------------------------
    def feed_steps(self) -> None:
        """The ranks' step reports up to now (one report of the latest step stands for all)."""
        run = self.cluster.run
        p = self.core.progress.get(run.spec.name)
        if run.state is not RunState.RUNNING or p is None or p.attempt != run.attempt:
            return
        step, done_at = run.last_step(self.now)
        if step <= self.resume_step or (run.attempt, step) <= self.fed:
            return
        self.fed = (run.attempt, step)
        run.reported_step = max(step, run.reported_step or 0)
        sample = StepSample(step=step, step_s=run.spec.step_s * run.slowdown, ts=done_at)
        self.observe(
            self.core.progress.on_steps(
                run.spec.name, run.attempt, 0, run.alloc[0], [sample], done_at
            )
        )

    def watch_progress(self) -> None:
        """Tick when the progress tracker's hang threshold runs out (steps have stopped)."""
        p = self.core.progress.get(self.cluster.run.spec.name)
        if p is None or not p.active or p.hung:
            return
        since = p.last_progress_at if p.last_progress_at is not None else p.started_at
        self.at(since + self.core.progress.threshold_s(p) + self.settings.tick_s, self.tick, False)

    def fail(self, why: str) -> None:
        run = self.cluster.run
        if run.state not in (RunState.RUNNING, RunState.HUNG):
            return
        self.feed_steps()
        run.advance(self.now)
        run.failure_steps.append(run.step())
        step = run.step()
        self.spans.stopped(self.now, run)
        run.lose(self.now)
        run.set_state(self.now, RunState.DOWN)
        self.watch_progress()
        self.at(self.now + self.sc.run.job_exit_delay_s, self.job_exit, run.attempt, why, step)

    def job_exit(self, attempt: int, why: str, step: int) -> None:
        """The scheduler reports the job ended (the daemon only polls the current attempt)."""
        run = self.cluster.run
        if run.attempt != attempt:
            return
        self.core.progress.stop(run.spec.name)
        self.spans.update(ended_at=self.now)
        self.at(self.now + self.settings.settle_s, self.attempt_failed, attempt, why, step)

    def attempt_failed(self, attempt: int, why: str, step: int) -> None:
        run = self.cluster.run
        if run.attempt != attempt:
            return
        ev = Event(
            self.now,
            EventKind.ATTEMPT_ENDED,
            run=run.spec.name,
            message=f"attempt {attempt} ended: failed ({why}) at step {step}",
            data={
                "state": "failed",
                "attempt": attempt,
                "last_step": step,
                "step": step,
                "failed": True,
            },
        )
        self.observe([Observation(ev)])

    def hang(self) -> None:
        run = self.cluster.run
        if run.state is not RunState.RUNNING:
            return
        self.feed_steps()
        self.spans.stopped(self.now, run, hung=True)
        run.set_state(self.now, RunState.HUNG)
        self.watch_progress()

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
            self.feed_steps()
            self.spans.stopped(self.now, run)
            run.lose(self.now)
        self.spans.detected(self.now)  # a restart is decided at the latest now
        run.advance(self.now)
        run.attempt += 1
        run.restarts += 1
        self.core.progress.stop(run.spec.name)  # RunManager._stop_current
        self.submit(exclude)

    def retry_pending(self) -> None:
        if self.cluster.run.state is RunState.PENDING:
            self.submit(())

    def submit(self, exclude: tuple[str, ...]) -> None:
        """RunManager._submit: the attempt gets nodes and the progress tracker starts on it."""
        run = self.cluster.run
        if not self.cluster.allocate(self.now, exclude):
            run.set_state(self.now, RunState.PENDING)
            return
        run.set_state(self.now, RunState.RESTARTING)
        self.resume_step = run.step()
        self.spans.submitted(run.attempt, self.now, run.step(), run.spec.step_s)
        cleared = self.core.progress.start_attempt(run.spec.name, run.attempt, self.now)
        if cleared:  # the previous attempt's hang is over
            self.observe(cleared)
        self.record(
            Event(
                self.now,
                EventKind.RUN_STARTED,
                run=run.spec.name,
                message=f"attempt {run.attempt} submitted on {len(run.alloc)} "
                f"node(s), resuming from step {run.step()}",
                data={
                    "attempt": run.attempt,
                    "exclude": list(exclude),
                    "resumed_from_step": run.step(),
                },
            )
        )
        self.watch_progress()
        self.at(self.now + self.sc.run.restart_cost_s, self.attempt_start, run.attempt)

    def attempt_start(self, attempt: int) -> None:
        """The job's ranks are up (after the restart cost) and start stepping."""
        run = self.cluster.run
        if run.attempt != attempt or run.state not in (RunState.RESTARTING, RunState.RUNNING):
            return
        run.set_state(self.now, RunState.RUNNING)
        if attempt > 1:
            run.restart_times.append(self.now)
        self.cluster.recompute_slowdown()
        self.spans.running(self.sc.run, run.step() + 1, self.now + run.spec.step_s * run.slowdown)
        self.at(self.now + run.spec.step_s * run.slowdown, self.feed_steps)  # the first step
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


__all__ = ["Logged", "SimResult", "Simulation"]
