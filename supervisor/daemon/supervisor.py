"""The supervisor's brain: messages in, detections, policy decisions, actions out.

``handle`` does the per-message work (parse, update memory, maybe detect) and must stay
cheap; ``tick`` runs the time-based detectors and polls runs; actions run as background
tasks so a slow scheduler never stalls ingestion. Everything time-related goes through the
injected clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from functools import partial

from trainwarden.health.clock import Clock
from trainwarden.health.errors import ReportError
from trainwarden.health.report import (
    TOPIC_PREFIX,
    CheckpointReport,
    ControlMessage,
    FaultReport,
    HealthReport,
    Heartbeat,
    NodeStatus,
    StepReport,
    parse_message,
)
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import (
    ActionKind,
    Actor,
    ConditionType,
    Decision,
    Event,
    EventKind,
)
from trainwarden.supervisor.daemon import evidence, incidents, upkeep
from trainwarden.supervisor.daemon import goodput as gp
from trainwarden.supervisor.daemon.context import CoreConfig, DaemonContext, Publisher, with_id
from trainwarden.supervisor.daemon.executor import Executor
from trainwarden.supervisor.daemon.logwatch import LogWatch
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.runs import RunManager
from trainwarden.supervisor.decide.core import gpu_signal
from trainwarden.supervisor.detectors.node_faults import Observation
from trainwarden.supervisor.model.cluster import RunInfo
from trainwarden.supervisor.model.lifecycle import LifecycleError, RunPhase
from trainwarden.supervisor.scheduler.base import JobState, Scheduler
from trainwarden.supervisor.store.base import StoreUnavailable
from trainwarden.supervisor.store.records import CheckpointRecord

log = logging.getLogger(__name__)
NODE_TOPICS = f"{TOPIC_PREFIX}/node/"
MAX_VETTING = 64  # checkpoint reports checked on disk at once; more are refused, counted
DECISION_BATCH = 5000  # observations recorded in one transaction by the decision loop


class Supervisor(DaemonContext):
    """Messages and ticks in, through the decision core, decisions out to the executor."""

    def __init__(
        self,
        config: CoreConfig,
        clock: Clock,
        store: AsyncStore,
        scheduler: Scheduler,
        policy: PolicyEngine,
        metrics: Metrics,
        publish: Publisher | None = None,
    ) -> None:
        super().__init__(config, clock, store, scheduler, policy, metrics, publish)
        self.runs = RunManager(
            self.state,
            scheduler,
            clock,
            self.progress,
            self.record_events_later,
            self.save_attempt,
            self.observe,
            fence=self.fenced,
        )
        self.executor = Executor(self)
        self.logs = LogWatch(scheduler, self.progress)  # runs whose progress is their log
        self.rejected = 0
        self.vetter = evidence.CheckpointVetter()
        self._vetting = 0  # checkpoint reports being checked on disk now
        self.goodput = gp.GoodputLedger()  # save stalls seen in step reports; advice given
        self._goodput_at = float("-inf")
        self._origin: dict[tuple[str, ConditionType], float] = {}
        self._decisions: list[Observation] | None = None  # queued for the decision loop
        self._decisions_ready = asyncio.Event()

    # -- ingestion -----------------------------------------------------------------

    async def handle(self, topic: str, payload: bytes) -> None:
        """One MQTT message. Bad input is counted, logged and recorded; never raised."""
        now = self.clock.now()
        try:
            msg = parse_message(topic, payload)
        except ReportError as exc:
            await self._reject(str(exc), now)
            return
        self.metrics.message(msg.kind)
        if isinstance(msg, ControlMessage):
            return
        if isinstance(msg, StepReport):  # a run topic (no relay): the node is only claimed
            obs = await self._on_steps([msg], now)
        elif isinstance(msg, CheckpointReport):
            if topic.startswith(NODE_TOPICS) and not await self._from_node(msg.node, topic, now):
                return
            await self._on_checkpoint(msg, now, topic)
            return
        elif not await self._from_node(msg.node, topic, now):
            return
        elif msg.kind == "node-steps":  # a node agent's relay: each report as if on its own
            obs = await self._on_steps(msg.reports, now)
        else:
            obs = await self._on_node(msg, now, topic)
        if obs:
            await self.observe(obs)

    async def _from_node(self, name: str, topic: str, now: float) -> bool:
        """Whether ``name`` is a node of the cluster; a message from any other name is
        counted, logged once per name, shown as an unknown reporter and changes nothing."""
        if self.state.knows(name):
            return True
        self.metrics.message_rejected("unknown-node")
        if self.state.roster is None:  # the scheduler's list is not read yet
            if self.state.unknown_messages == 0:
                log.warning(
                    "messages from nodes the store does not know are dropped until %s's node "
                    "list is read (first: %s)",
                    self.scheduler.name,
                    name,
                )
            self.state.unknown_messages += 1
            return False
        if self.state.unknown_reporter(name, topic, now):
            why = (
                f"messages from {name!r} ({topic}): {self.scheduler.name} has no such node; "
                "ignored (trainwarden nodes --all lists such reporters)"
            )
            if len(self.state.unknown) <= 20 or len(self.state.unknown) % 1000 == 0:
                log.warning("%s", why)
                await self.record_events_later(
                    [
                        Event(
                            now,
                            EventKind.REJECTED_MESSAGE,
                            message=why,
                            data={"reporter": name, "topic": topic, "unknown_reporter": True},
                        )
                    ]
                )
        return False

    async def _on_node(
        self, msg: Heartbeat | NodeStatus | FaultReport | HealthReport, now: float, topic: str
    ) -> list[Observation]:
        """A message from a node's agent, on the node's own topic (its broker identity)."""
        if isinstance(msg, Heartbeat):
            stale = self.nodes.stale_heartbeat(msg.node, msg.seq)
            if stale is not None:  # a replay must not keep a dead node alive
                await self._reject(stale, now)
                return []
            self.core.hearing.heartbeat(now, msg.ts)
            node = self.state.node(msg.node)
            node.last_heartbeat_at = now
            self.store.batch.heartbeat(msg.node, now)
            return self.nodes.on_heartbeat(msg.node, now, msg.interval_s, msg.seq)
        if isinstance(msg, NodeStatus):
            self.state.node(msg.node)
            return self.nodes.on_status(msg.node, msg.state, msg.reason, now)
        if isinstance(msg, FaultReport):
            self.state.node(msg.node)
            obs = [
                # the decision's evidence names who said so: the broker identity of the topic
                replace(o, event=replace(o.event, data={**o.event.data, "source": topic}))
                for o in self.nodes.on_faults(msg.node, [f.to_fault() for f in msg.faults], now)
            ]
            for o in obs:
                if o.ctype is not None:
                    self._origin[(msg.node, o.ctype)] = msg.ts
            return obs
        self.state.node(msg.node).last_report_at = now
        signal = gpu_signal(msg, now)
        if signal is not None:
            self.stragglers.observe_gpu(msg.node, signal)
        return self.nodes.on_health(msg.node, msg, now)

    async def _reject(self, why: str, now: float, reason: str | None = None) -> None:
        self.rejected += 1
        self.metrics.message_rejected(reason or why)
        # Log and record the first ones and then one in a hundred: a flood must not
        # become a flood of log lines and rows.
        if self.rejected <= 20 or self.rejected % 100 == 0:
            log.warning("rejected message: %s", why)
            await self.record_events_later(
                [Event(now, EventKind.REJECTED_MESSAGE, message=why, data={"count": self.rejected})]
            )

    async def _on_steps(self, reports: Sequence[StepReport], now: float) -> list[Observation]:
        obs: list[Observation] = []
        for msg in reports:
            run = self.state.runs.get(msg.run)
            if run is None or msg.attempt != run.attempt:
                continue  # an older attempt's late report, or no such run: changes nothing
            why = evidence.roster_problem(run, msg.rank, msg.node, "steps")
            if why is not None:
                await self._reject(why, now, "roster")
                continue
            obs += self.progress.on_steps(
                msg.run, msg.attempt, msg.rank, msg.node, list(msg.samples), now
            )
            self.stragglers.observe_report(msg)
            self.goodput.steps(msg.run, msg.attempt, msg.samples)
            top = max(s.step for s in msg.samples)
            if run.last_step is None or top > run.last_step:
                run.last_step = top
            if run.attempt_first_step is None:
                run.attempt_first_step = min(s.step for s in msg.samples)
        return obs

    async def _on_checkpoint(self, msg: CheckpointReport, now: float, topic: str) -> None:
        """A rank saved a checkpoint: it counts once found complete on disk (looked at in
        the background, so a slow file system never holds up ingestion). At most
        MAX_VETTING are looked at at once: a flood of reports is refused, not queued."""
        run = self.state.runs.get(msg.run)
        if run is None or msg.attempt != run.attempt:
            return
        if self._vetting >= MAX_VETTING:
            await self._reject(
                f"checkpoint report of run {run.name} step {msg.step} from node {msg.node} "
                f"not checked: {MAX_VETTING} checkpoint reports are being checked already",
                now,
                "checkpoint",
            )
            return
        self._vetting += 1
        self.spawn(self._vet_checkpoint(run, msg, now, topic))

    async def _vet_checkpoint(
        self, run: RunInfo, msg: CheckpointReport, now: float, topic: str
    ) -> None:
        try:
            await self._count_checkpoint(run, msg, now, topic)
        finally:
            self._vetting -= 1

    async def _count_checkpoint(
        self, run: RunInfo, msg: CheckpointReport, now: float, topic: str
    ) -> None:
        why = evidence.roster_problem(run, msg.rank, msg.node, "checkpoint")
        if why is not None:
            await self._reject(why, now, "roster")
            return
        verdict, first = await self.vetter.vet(run, msg.step, msg.path)
        if not verdict.valid:
            await self._reject(
                f"checkpoint report of run {run.name} step {msg.step} from node {msg.node} "
                f"does not count: {verdict.reason}",
                now,
                "checkpoint",
            )
            return
        if not first:
            return  # another rank's report of the same checkpoint already counted
        if run.last_checkpoint_step is None or msg.step >= run.last_checkpoint_step:
            run.last_checkpoint_step = msg.step
            run.last_checkpoint_path = msg.path
        await self.store.write(
            self.store.store.add_checkpoint,
            CheckpointRecord(
                run=msg.run, step=msg.step, path=msg.path, reported_at=now, attempt=msg.attempt
            ),
        )
        # the node's own time of the report, never later than it arrived (a claimed future
        # time would read as a long background write and move the interval advice)
        self.goodput.checkpoint(msg.run, msg.attempt, msg.step, min(msg.ts, now))
        waiter = self._checkpoint_waiters.get(msg.run)
        if waiter is not None:
            waiter.set()
        await self.observe(
            [
                Observation(
                    Event(
                        now,
                        EventKind.CHECKPOINT_SAVED,
                        run=msg.run,
                        node=msg.node,
                        message=f"checkpoint of step {msg.step} saved in {msg.path} "
                        f"(checked on disk: {verdict.reason})",
                        data={
                            "step": msg.step,
                            "path": msg.path,
                            "attempt": msg.attempt,
                            "source": topic,
                        },
                    )
                )
            ]
        )

    # -- detections -> conditions -> policy ------------------------------------------

    async def observe(self, obs: Sequence[Observation]) -> None:
        """Record the observations' events, update the conditions, decide. While the
        database is away this waits (in order) for it: nothing is decided on evidence that
        is not recorded; the trackers have taken the input already.

        Under the daemon (``decide_in_background``) this only queues them: the decision
        loop records what queued in one transaction and decides on it, so neither the
        database nor the policy ever holds up ingestion (20,000 agents coming online is a
        few writes, not 20,000)."""
        if not obs:
            return
        if self._decisions is not None:
            self._decisions.extend(obs)
            self._decisions_ready.set()
            return
        await self._observe_or_hold(list(obs))

    def decide_in_background(self) -> None:
        """From now on observations are decided by :meth:`decision_loop` (the daemon)."""
        self._decisions = []

    async def decision_loop(self) -> None:
        """Record and decide what ingestion and the tick observed, in order, in batches."""
        while True:
            await self._decisions_ready.wait()
            self._decisions_ready.clear()
            while self._decisions:
                batch = self._decisions[:DECISION_BATCH]
                del self._decisions[:DECISION_BATCH]
                try:
                    await self._observe_or_hold(batch)
                except Exception:  # never end the loop quietly: count, log, go on
                    self.metrics.handler_error("decide")
                    log.exception("deciding on %d observation(s) failed; going on", len(batch))

    async def _observe_or_hold(self, obs: list[Observation]) -> None:
        work = partial(self._observe, obs)
        if self.must_hold():
            self.hold(f"{len(obs)} observation(s)", work)
            return
        try:
            await work()
        except StoreUnavailable:
            self.hold(f"{len(obs)} observation(s)", work)

    async def _observe(self, obs: list[Observation]) -> None:
        ids = await self.record_events([o.event for o in obs])
        changed = self.core.conditions(obs, ids)
        for cond in changed:
            if cond.status:
                origin = self._origin.pop((cond.subject, cond.type), None)
                latency = cond.since - origin if origin is not None else 0.0
                self.metrics.detection(cond.type.value, max(0.0, latency))
        for name in {o.event.node for o in obs if o.event.node}:
            self.update_phase(name)
        if changed:
            await self.store.write(self.store.store.save_conditions, changed)
        events = [with_id(o.event, eid) for o, eid in zip(obs, ids, strict=True)]
        self.execute(self.core.decide(changed, events, self.view(), self.history))

    def update_phase(self, name: str) -> None:
        """Move a node to the phase the core derives (drains are actions')."""
        node = self.state.nodes.get(name)
        if node is None or node.drained:
            return
        target = self.core.phase_of(name)
        if target is None or target is node.phase:
            return
        try:
            node.move(target)
        except LifecycleError as exc:
            log.warning("node %s: %s", name, exc)
            return
        self.store.batch.nodes.append(self.node_record(node))

    async def tick(self) -> None:
        """Time-based detection, run polling, held decisions; called every ~0.5 s."""
        await self.replay()  # decision work held through a database outage, if any
        now = self.clock.now()
        for run in list(self.state.runs.values()):
            ended = await self.runs.poll(run)
            if ended is not None and ended is not JobState.COMPLETED:
                self.spawn(self._after_attempt_failed(run, run.attempt, ended))
            elif ended is JobState.COMPLETED:
                await self.record_events_later(
                    [
                        Event(
                            now,
                            EventKind.ATTEMPT_ENDED,
                            run=run.name,
                            message=f"run completed at step {run.last_step}",
                            data={"state": "completed", "attempt": run.attempt},
                        )
                    ]
                )
        if now - self.last_sync >= self.config.scheduler_sync_s:
            self.last_sync = now
            await upkeep.sync_scheduler(self)
            await upkeep.adopt_tagged_jobs(self)
        obs, log_events = await self.logs.tick(self.state.runs.values(), now)
        await self.record_events_later(log_events)
        obs += self.core.detect(now) + self.core.straggler_findings(now)
        if obs:
            await self.observe(obs)
        await upkeep.vetting(self, self.executor, now)
        if now - self._goodput_at >= gp.EXPORT_EVERY_S and self.state.runs:
            self._goodput_at = now
            self.spawn(self._export_goodput(now))
        self.execute(self.policy.tick(self.view()))
        await incidents.persist(self)
        await self.store.flush()

    async def _export_goodput(self, now: float) -> None:
        """Time counters and checkpoint advice per run (supervisor.goodput), in the background."""
        runs = list(self.state.runs.values())
        events = await gp.export(self.store, runs, self.goodput, self.progress, self.metrics, now)
        await self.record_events_later(events)

    async def _after_attempt_failed(self, run: RunInfo, attempt: int, state: JobState) -> None:
        """Give node detections a moment to arrive, then let the policy decide."""
        await self.clock.sleep(self.config.settle_s)
        if run.attempt != attempt or run.phase in (
            RunPhase.RESTARTING,
            RunPhase.COMPLETED,
            RunPhase.GAVE_UP,
        ):
            return
        now = self.clock.now()
        ev = Event(
            now,
            EventKind.ATTEMPT_ENDED,
            run=run.name,
            message=f"attempt {attempt} ended: {state.value} at step {run.last_step}",
            data={
                "state": state.value,
                "attempt": attempt,
                "last_step": run.last_step,
                "failed": True,
            },
        )
        await self.decide_on_event(ev)

    async def decide_on_event(self, ev: Event) -> None:
        """Record ``ev`` and let the policy decide on it (held while the database is away)."""

        async def work() -> None:
            [eid] = await self.record_events([ev])
            self.execute(self.policy.on_event(with_id(ev, eid), self.view(), self.history))

        if self.must_hold():
            self.hold(f"event {ev.kind.value}", work)
            return
        try:
            await work()
        except StoreUnavailable:
            self.hold(f"event {ev.kind.value}", work)

    # -- actions: the executor's ---------------------------------------------------------

    def execute(self, decisions: Sequence[Decision]) -> None:
        self.executor.execute(decisions)

    async def carry_out(self, d: Decision) -> tuple[int, bool, str]:
        return await self.executor.carry_out(d)

    async def perform(self, d: Decision, action_id: int, note: str = "") -> tuple[bool, str]:
        return await self.executor.perform(d, action_id, note)


def actor_of(who: str | None) -> Actor:
    return Actor.OPERATOR if who else Actor.RULE


__all__ = ["ActionKind", "CoreConfig", "Supervisor"]
