"""What every part of the daemon works on: its I/O handles, its memory and the decision core.

The supervisor (ingestion and the tick), the executor (actions) and the upkeep each take a
context; none of them imports another's module, so the daemon has no import cycle.

While the database is away, work that must be recorded before it goes on (recording the
evidence a decision rests on, recording a decision before carrying it out) is held here, in
order, and done when the database is back (:meth:`DaemonContext.hold`, :meth:`replay`);
ingestion and the trackers go on meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from trainwarden.health.clock import Clock
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import ActionRecordView, ClusterView, Event
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.runs import RunManager
from trainwarden.supervisor.decide.core import DecisionCore
from trainwarden.supervisor.decide.settings import DetectorSettings
from trainwarden.supervisor.detectors.conditions import ConditionBook
from trainwarden.supervisor.detectors.node_faults import NodeHealthTracker
from trainwarden.supervisor.detectors.progress import ProgressTracker
from trainwarden.supervisor.detectors.stragglers.detector import StragglerDetector
from trainwarden.supervisor.errors import StoreError
from trainwarden.supervisor.model.cluster import ClusterState, NodeInfo, RunInfo
from trainwarden.supervisor.scheduler.base import Scheduler
from trainwarden.supervisor.store.base import StoreUnavailable
from trainwarden.supervisor.store.records import AttemptRecord, NodeRecord

log = logging.getLogger(__name__)

Publisher = Callable[[str, bytes], Awaitable[None]]
MAX_HELD_WORK = 20_000  # units of decision work held through a database outage


@dataclass
class CoreConfig(DetectorSettings):
    """The detector settings plus what only the daemon, with real I/O, needs."""

    checkpoint_wait_s: float = 120.0  # checkpoint-before-eviction bound
    # backoff between retries of a drain/undrain the scheduler refused transiently (~10 min)
    retry_delays_s: tuple[float, ...] = (2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
    scheduler_sync_s: float = 5.0  # how often the scheduler's node states are read
    # on top of the policy file's xid.overrides (the file's are applied first)
    xid_overrides: dict[int | str, str] = field(default_factory=dict)


class DaemonContext:
    """The daemon's memory (cluster state, recent events and actions), its I/O handles and
    the decision core; ``runs`` is set by the supervisor, which observes what it reports."""

    runs: RunManager

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
        # why actions must not run now (a leader whose lease may have run out), or None
        self.fence: Callable[[], str | None] = lambda: None
        self.history: deque[Event] = deque(maxlen=2000)
        self.recent_actions: deque[ActionRecordView] = deque(maxlen=2000)
        self.tasks: set[asyncio.Task[None]] = set()
        self._checkpoint_waiters: dict[str, asyncio.Event] = {}
        self.last_sync = float("-inf")
        self.reported_tags: set[str] = set()  # tagged jobs of unregistered runs, reported once
        # decision work waiting for the database, oldest first: (what, the work)
        self.held_work: deque[tuple[str, Callable[[], Awaitable[None]]]] = deque()
        self.held_dropped = 0
        self.incident_rows: dict[str, int] = {}  # the policy's incident id -> its row id
        self.incidents_closed: set[str] = set()

    def fenced(self) -> str | None:
        """The fence as it is now (the daemon replaces ``fence`` after construction)."""
        return self.fence()

    # the core's parts, read through it (a restore replaces the core's book, not a copy)
    @property
    def book(self) -> ConditionBook:
        return self.core.book

    @property
    def nodes(self) -> NodeHealthTracker:
        return self.core.nodes

    @property
    def progress(self) -> ProgressTracker:
        return self.core.progress

    @property
    def stragglers(self) -> StragglerDetector:
        return self.core.stragglers

    async def record_events(self, events: list[Event]) -> list[int]:
        """Store events and return their ids (evidence for what is decided on them); raises
        StoreUnavailable while the database is away (the caller holds its work)."""
        ids: list[int] = await self.store.call(self.store.store.append_events, events)
        for ev, eid in zip(events, ids, strict=True):
            self.history.append(with_id(ev, eid))
        return ids

    async def record_events_later(self, events: list[Event]) -> None:
        """Store events nothing is decided on (what was done, what was seen): written now,
        or in order once the database is back."""
        if not events:
            return
        if not self.must_hold():
            try:
                await self.record_events(events)  # with their ids, as explain shows them
                return
            except StoreUnavailable:
                pass
            except StoreError as exc:  # refused: never retried, it cannot succeed
                self.store.rejected += 1
                log.error("the database refused %d event(s): %s", len(events), exc)
                return
        self.history.extend(events)
        await self.store.write(self.store.store.append_events, events)

    def must_hold(self) -> bool:
        """Whether new decision work must wait behind work already held (order is kept)."""
        return bool(self.held_work) or not self.store.available

    def hold(self, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """Keep decision work for when the database is back (bounded: at the bound the
        oldest is dropped, counted and logged)."""
        if len(self.held_work) >= MAX_HELD_WORK:
            dropped, _ = self.held_work.popleft()
            self.held_dropped += 1
            log.error("database away too long: dropped held work (%s)", dropped)
        if not self.held_work:
            log.warning("database unavailable: holding decisions until it is back (%s)", what)
        self.held_work.append((what, work))

    async def replay(self) -> int:
        """Do the held work in order once the database is back and this daemon may act;
        stops (keeping the rest) if the database goes away again. Returns how many ran."""
        if not self.held_work or self.fence() is not None or not await self.store.recover():
            return 0
        done = 0
        while self.held_work:
            what, work = self.held_work[0]
            try:
                await work()
            except StoreUnavailable:
                return done  # still first in line for the next try
            except Exception:  # one bad unit must not block the others for ever
                log.exception("held work failed (%s); going on", what)
            self.held_work.popleft()
            done += 1
        log.warning("database back: %d held unit(s) of decision work done", done)
        return done

    def view(self) -> ClusterView:
        return self.state.view(self.clock.now(), self.book, self.recent_actions, self.core.causes)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

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

    def node_record(self, node: NodeInfo) -> NodeRecord:
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

    async def save_node(self, node: NodeInfo, *, now: bool = False) -> None:
        """Batched with the next flush, or (``now``: a drain, a return to service, which a
        crash must not lose) written at once."""
        self.store.batch.nodes.append(self.node_record(node))
        if now:  # the whole batch, so no older record of the node is written after this one
            await self.store.flush()

    async def save_attempt(self, run: RunInfo, fields: dict[str, Any]) -> None:
        st = self.store.store
        if fields.get("state") == "submitted":
            await self.store.write(
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
            await self.store.write(st.update_attempt, run.name, run.attempt, **fields)
        await self.store.write(
            st.update_run,
            run.name,
            state=run.phase.value,
            current_attempt=run.attempt,
            restarts=run.restarts,
        )


def with_id(ev: Event, eid: int) -> Event:
    return Event(ev.ts, ev.kind, ev.node, ev.run, ev.message, ev.data, eid)
