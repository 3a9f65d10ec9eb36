"""The supervisor's brain: messages in, detections, policy decisions, actions out.

``handle`` does the per-message work (parse, update memory, maybe detect) and must stay
cheap; ``tick`` runs the time-based detectors and polls runs; actions run as background
tasks so a slow scheduler never stalls ingestion. Everything time-related goes through the
injected clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainwarden.health.clock import Clock
from trainwarden.health.errors import ReportError
from trainwarden.health.report import (
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
    ActionRecordView,
    ActionRequest,
    Actor,
    ConditionType,
    Decision,
    Event,
    EventKind,
    Verdict,
)
from trainwarden.supervisor.daemon import upkeep
from trainwarden.supervisor.daemon.executor import attempt
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.runs import RunManager
from trainwarden.supervisor.decide.core import DecisionCore, gpu_signal
from trainwarden.supervisor.decide.settings import DetectorSettings
from trainwarden.supervisor.detectors.node_faults import Observation
from trainwarden.supervisor.model.cluster import ClusterState, NodeInfo, RunInfo
from trainwarden.supervisor.model.lifecycle import LifecycleError, RunPhase
from trainwarden.supervisor.scheduler.base import JobState, Scheduler
from trainwarden.supervisor.store.records import AttemptRecord, CheckpointRecord, NodeRecord

log = logging.getLogger(__name__)

Publisher = Callable[[str, bytes], Awaitable[None]]


@dataclass
class CoreConfig(DetectorSettings):
    """The detector settings plus what only the daemon, with real I/O, needs."""

    checkpoint_wait_s: float = 120.0  # checkpoint-before-eviction bound
    # backoff between retries of a drain/undrain the scheduler refused transiently (~10 min)
    retry_delays_s: tuple[float, ...] = (2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
    scheduler_sync_s: float = 5.0  # how often the scheduler's node states are read
    # on top of the policy file's xid.overrides (the file's are applied first)
    xid_overrides: dict[int | str, str] = field(default_factory=dict)


class Supervisor:
    """Owns the state, the detectors and the run manager; asks the policy what to do."""

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
        self.config = config
        self.clock = clock
        self.store = store
        self.scheduler = scheduler
        self.policy = policy
        self.metrics = metrics
        self.publish = publish
        self.state = ClusterState()
        self.core = DecisionCore(config, policy, config.xid_overrides)
        # the core's parts, named for the executor, upkeep and restore
        self.book = self.core.book
        self.nodes = self.core.nodes
        self.progress = self.core.progress
        self.stragglers = self.core.stragglers
        self.runs = RunManager(
            self.state,
            scheduler,
            clock,
            self.progress,
            self.record_events,
            self._save_attempt,
            self.observe,
        )
        self.history: deque[Event] = deque(maxlen=2000)
        self.recent_actions: deque[ActionRecordView] = deque(maxlen=2000)
        self.tasks: set[asyncio.Task[None]] = set()
        self.rejected = 0
        self._checkpoint_waiters: dict[str, asyncio.Event] = {}
        self._origin: dict[tuple[str, ConditionType], float] = {}
        self._last_sync = float("-inf")
        self._held_actions: dict[ActionRequest, int] = {}
        self.reported_tags: set[str] = set()  # tagged jobs of unregistered runs, reported once

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
        obs: list[Observation] = []
        if isinstance(msg, Heartbeat):
            node = self.state.node(msg.node)
            node.last_heartbeat_at = now
            self.store.batch.heartbeat(msg.node, now)
            obs = self.nodes.on_heartbeat(msg.node, now, msg.interval_s)
        elif isinstance(msg, NodeStatus):
            self.state.node(msg.node)
            obs = self.nodes.on_status(msg.node, msg.state, msg.reason, now)
        elif isinstance(msg, FaultReport):
            self.state.node(msg.node)
            obs = self.nodes.on_faults(msg.node, [f.to_fault() for f in msg.faults], now)
            for o in obs:
                if o.ctype is not None:
                    self._origin[(msg.node, o.ctype)] = msg.ts
        elif isinstance(msg, HealthReport):
            self.state.node(msg.node).last_report_at = now
            obs = self.nodes.on_health(msg.node, msg, now)
            signal = gpu_signal(msg, now)
            if signal is not None:
                self.stragglers.observe_gpu(msg.node, signal)
        elif isinstance(msg, StepReport):
            obs = self._on_steps(msg, now)
        elif isinstance(msg, CheckpointReport):
            obs = await self._on_checkpoint(msg, now)
        elif isinstance(msg, ControlMessage):
            return
        if obs:
            await self.observe(obs)

    async def _reject(self, why: str, now: float) -> None:
        self.rejected += 1
        self.metrics.message_rejected(why)
        # Log and record the first ones and then one in a hundred: a flood must not
        # become a flood of log lines and rows.
        if self.rejected <= 20 or self.rejected % 100 == 0:
            log.warning("rejected message: %s", why)
            await self.record_events(
                [Event(now, EventKind.REJECTED_MESSAGE, message=why, data={"count": self.rejected})]
            )

    def _on_steps(self, msg: StepReport, now: float) -> list[Observation]:
        run = self.state.runs.get(msg.run)
        if run is None:
            return []
        obs = self.progress.on_steps(
            msg.run, msg.attempt, msg.rank, msg.node, list(msg.samples), now
        )
        if msg.attempt == run.attempt:
            self.stragglers.observe_report(msg)
        if msg.attempt == run.attempt:
            top = max(s.step for s in msg.samples)
            if run.last_step is None or top > run.last_step:
                run.last_step = top
            if run.attempt_first_step is None:
                run.attempt_first_step = min(s.step for s in msg.samples)
        return obs

    async def _on_checkpoint(self, msg: CheckpointReport, now: float) -> list[Observation]:
        run = self.state.runs.get(msg.run)
        if run is None:
            return []
        if run.last_checkpoint_step is None or msg.step >= run.last_checkpoint_step:
            run.last_checkpoint_step = msg.step
            run.last_checkpoint_path = msg.path
        await self.store.call(
            self.store.store.add_checkpoint,
            CheckpointRecord(
                run=msg.run, step=msg.step, path=msg.path, reported_at=now, attempt=msg.attempt
            ),
        )
        waiter = self._checkpoint_waiters.get(msg.run)
        if waiter is not None:
            waiter.set()
        return [
            Observation(
                Event(
                    now,
                    EventKind.CHECKPOINT_SAVED,
                    run=msg.run,
                    node=msg.node,
                    message=f"checkpoint of step {msg.step} saved in {msg.path}",
                    data={"step": msg.step, "path": msg.path, "attempt": msg.attempt},
                )
            )
        ]

    # -- detections -> conditions -> policy ------------------------------------------

    async def record_events(self, events: list[Event]) -> list[int]:
        ids: list[int] = await self.store.call(self.store.store.append_events, events)
        for ev, eid in zip(events, ids, strict=True):
            self.history.append(_with_id(ev, eid))
        return ids

    async def observe(self, obs: Sequence[Observation]) -> None:
        ids = await self.record_events([o.event for o in obs])
        changed = self.core.conditions(obs, ids)
        for cond in changed:
            if cond.status:
                origin = self._origin.pop((cond.subject, cond.type), None)
                latency = cond.since - origin if origin is not None else 0.0
                self.metrics.detection(cond.type.value, max(0.0, latency))
        for name in {o.event.node for o in obs if o.event.node}:
            self._update_phase(name)
        if changed:
            await self.store.call(self.store.store.save_conditions, changed)
        events = [_with_id(o.event, eid) for o, eid in zip(obs, ids, strict=True)]
        self.execute(self.core.decide(changed, events, self.view(), list(self.history)))

    def _update_phase(self, name: str) -> None:
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

    def view(self) -> Any:
        causes = {n: self.core.causes(n) for n in self.state.nodes}
        return self.state.view(self.clock.now(), self.book, self.recent_actions, causes)

    async def tick(self) -> None:
        """Time-based detection, run polling, held decisions; called every ~0.5 s."""
        now = self.clock.now()
        for run in list(self.state.runs.values()):
            ended = await self.runs.poll(run)
            if ended is not None and ended is not JobState.COMPLETED:
                self._spawn(self._after_attempt_failed(run, run.attempt, ended))
            elif ended is JobState.COMPLETED:
                await self.record_events(
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
        if now - self._last_sync >= self.config.scheduler_sync_s:
            self._last_sync = now
            await upkeep.sync_scheduler(self)
            await upkeep.adopt_tagged_jobs(self)
        obs = self.core.detect(now) + self.core.straggler_findings(now)
        if obs:
            await self.observe(obs)
        await upkeep.vetting(self, now)
        self.execute(self.policy.tick(self.view()))
        await self.store.flush()

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
        [eid] = await self.record_events([ev])
        self.execute(self.policy.on_event(_with_id(ev, eid), self.view(), list(self.history)))

    # -- actions ---------------------------------------------------------------------

    def execute(self, decisions: Sequence[Decision]) -> None:
        if decisions:
            self._spawn(self._execute(list(decisions)))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def _execute(self, decisions: list[Decision]) -> None:
        """Record every decision first (so held ones are known before anything releases
        them), then carry out the allowed ones in the order the policy gave."""
        ids = [await self._record(d) for d in decisions]
        for d, action_id in zip(decisions, ids, strict=True):
            if d.verdict is Verdict.ALLOW:
                await self.perform(d, action_id)

    async def carry_out(self, d: Decision) -> tuple[int, bool, str]:
        """Record one decision and, if allowed, do it. Returns (action id, ok, result)."""
        action_id = await self._record(d)
        if d.verdict is not Verdict.ALLOW:
            return action_id, True, d.verdict.value
        ok, result = await self.perform(d, action_id)
        return action_id, ok, result

    async def _record(self, d: Decision) -> int:
        now = self.clock.now()
        held = self._held_actions.pop(d.request, None)
        if held is not None:  # a decision the policy held earlier, now released or dropped
            action_id = held
            await self.store.call(
                self.store.store.update_action,
                action_id,
                status="pending" if d.verdict is Verdict.ALLOW else "skipped",
                result=f"released: {d.verdict.value}; "
                + "; ".join(f"{g.guard}: {g.detail}" for g in d.guards),
                finished_at=None if d.verdict is Verdict.ALLOW else now,
            )
        else:
            action_id = await self.store.call(self.store.store.record_action, d, ts=now)
        if d.verdict is Verdict.HOLD:
            self._held_actions[d.request] = action_id
        self.recent_actions.append(
            ActionRecordView(now, d.request.kind, d.request.node, d.request.run, d.verdict)
        )
        await self.record_events(
            [
                Event(
                    now,
                    EventKind.ACTION,
                    node=d.request.node,
                    run=d.request.run,
                    message=f"{d.request.kind.value} ({d.verdict.value}) by "
                    f"{d.request.who or d.request.rule or d.request.actor.value}: "
                    f"{d.request.reason}",
                    data={
                        "action_id": action_id,
                        "kind": d.request.kind.value,
                        "actor": d.request.actor.value,
                        "verdict": d.verdict.value,
                        "who": d.request.who,
                        "rule": d.request.rule,
                        "evidence": list(d.request.evidence),
                    },
                )
            ]
        )
        if d.verdict is not Verdict.ALLOW:
            self.metrics.action(d.request.kind.value, d.verdict.value, "skipped")
        return action_id

    async def perform(self, d: Decision, action_id: int, note: str = "") -> tuple[bool, str]:
        """Carry out a recorded, allowed decision: automatic, manual and approved ones alike
        get the retry of transient scheduler failures, the audit result and the metrics.
        ``note`` (e.g. who approved it) leads the recorded result."""
        await self.store.call(
            self.store.store.update_action,
            action_id,
            status="running",
            result=None,
            finished_at=None,
        )
        ok, result, retry = await attempt(self, d, action_id)
        if retry:
            result += f" (retrying up to {len(self.config.retry_delays_s)} times)"
        result = f"{note}; {result}" if note else result
        await self._finish(d, action_id, ok, result)
        if retry:
            self._spawn(self._retry(d, action_id, note))
        return ok, result

    async def _retry(self, d: Decision, action_id: int, note: str = "") -> None:
        """Retry an idempotent action after a transient scheduler failure, with backoff."""
        for n, delay in enumerate(self.config.retry_delays_s, start=1):
            await self.clock.sleep(delay)
            ok, result, again = await attempt(self, d, action_id)
            if ok or not again or n == len(self.config.retry_delays_s):
                result = f"retry {n}: {result}"
                await self._finish(d, action_id, ok, f"{note}; {result}" if note else result)
                return
            log.warning(
                "action %s %s: retry %d failed: %s", action_id, d.request.kind.value, n, result
            )

    async def _finish(self, d: Decision, action_id: int, ok: bool, result: str) -> None:
        done = self.clock.now()
        await self.store.call(
            self.store.store.update_action,
            action_id,
            status="succeeded" if ok else "failed",
            result=result,
            finished_at=done,
        )
        self.policy.record_result(d, ok, done)
        self.metrics.action(d.request.kind.value, d.verdict.value, "succeeded" if ok else "failed")
        if not ok:
            log.error("action %s %s failed: %s", action_id, d.request.kind.value, result)

    # -- helpers used by actions ------------------------------------------------------

    async def wait_for_checkpoint(self, run: str, timeout_s: float) -> bool:
        ev = self._checkpoint_waiters.setdefault(run, asyncio.Event())
        ev.clear()
        try:
            await asyncio.wait_for(ev.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            self._checkpoint_waiters.pop(run, None)

    def node_record(self, node: NodeInfo) -> Any:
        return NodeRecord(
            name=node.name,
            state=node.phase.value,
            scheduler_state=node.scheduler_state,
            drained_by=node.drained_by,
            drain_reason=node.drain_reason,
            last_heartbeat_at=node.last_heartbeat_at,
            last_report_at=node.last_report_at,
            updated_at=self.clock.now(),
        )

    async def save_node(self, node: NodeInfo) -> None:
        self.store.batch.nodes.append(self.node_record(node))

    async def _save_attempt(self, run: RunInfo, fields: dict[str, Any]) -> None:
        st = self.store.store
        if fields.get("state") == "submitted":
            await self.store.call(
                st.add_attempt,
                AttemptRecord(
                    run=run.name,
                    attempt=run.attempt,
                    state="submitted",
                    job_id=fields["job_id"],
                    nodes=tuple(run.nodes),
                    excluded=tuple(fields["excluded"]),
                    resumed_from=fields["resumed_from"],
                    resumed_from_step=run.resumed_from_step,
                    submitted_at=fields["submitted_at"],
                ),
            )
        else:
            await self.store.call(st.update_attempt, run.name, run.attempt, **fields)
        await self.store.call(
            st.update_run,
            run.name,
            state=run.phase.value,
            current_attempt=run.attempt,
            restarts=run.restarts,
        )


def _with_id(ev: Event, eid: int) -> Event:
    return Event(ev.ts, ev.kind, ev.node, ev.run, ev.message, ev.data, eid)


def actor_of(who: str | None) -> Actor:
    return Actor.OPERATOR if who else Actor.RULE


__all__ = ["ActionKind", "CoreConfig", "Supervisor"]
