"""The daemon's detection pipeline, driven in virtual time: detectors -> conditions -> policy.

The simulator uses the very detectors the daemon runs (``supervisor.detectors``: the node
health tracker, the progress tracker, the condition book) and the same order of work as
``daemon.supervisor.Supervisor.observe``: every observation's event is recorded and gets an
id, each observation that names a condition goes through the book with that id as its
evidence, and the policy then sees ``on_condition`` for every real transition followed by
``on_event`` for every event, all against one view of the cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from trainwarden.health.faults import XidCatalog
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import ClusterView, Condition, Decision, Event
from trainwarden.supervisor.detectors.conditions import ConditionBook
from trainwarden.supervisor.detectors.node_faults import NodeHealthTracker, Observation
from trainwarden.supervisor.detectors.progress import ProgressTracker


@dataclass(frozen=True)
class DetectorSettings:
    """The daemon's detector settings (``CoreConfig`` defaults; the agent's intervals).

    ``tests/sim`` checks they match ``daemon.supervisor.CoreConfig``; the simulator does not
    import the daemon core itself (it pulls in the store and metrics).
    """

    heartbeat_interval_s: float = 2.0  # trainwarden.health.agent.AgentConfig.heartbeat_interval_s
    heartbeat_misses: float = 3.0
    will_confirm_s: float = 2.0
    hang_k: float = 2.0
    hang_floor_s: float = 30.0
    startup_timeout_s: float = 1800.0
    settle_s: float = 3.0  # after an attempt dies, wait this long for the node fault to show
    vet_period_s: float = 60.0
    tick_s: float = 0.5  # the daemon's tick: a deadline is noticed on the next tick

    def heartbeat_limit_s(self, grace_s: float = 1.0) -> float:
        """Silence after which the tracker declares a node dead (NodeHealthTracker.tick)."""
        return self.heartbeat_misses * self.heartbeat_interval_s + grace_s


def apply_observations(
    book: ConditionBook, obs: Sequence[Observation], ids: Sequence[int]
) -> list[Condition]:
    """The conditions that really changed: each observation's condition, evidence its event.

    This is the detection step of ``Supervisor.observe`` (supervisor/core.py) as a pure
    function; the daemon could call it too.
    """
    changed: list[Condition] = []
    for o, eid in zip(obs, ids, strict=True):
        if o.ctype is None or o.subject is None:
            continue
        cond = book.apply(o.subject, o.ctype, o.status, o.reason, o.event.ts, (eid,))
        if cond is not None:
            changed.append(cond)
    return changed


def decide(
    engine: PolicyEngine,
    changed: Sequence[Condition],
    events: Sequence[Event],
    view: ClusterView,
    history: Sequence[Event],
) -> list[Decision]:
    """The policy's decisions, in the daemon's order: conditions first, then every event."""
    out: list[Decision] = []
    for cond in changed:
        out += engine.on_condition(cond, view, history)
    for ev in events:
        out += engine.on_event(ev, view, history)
    return out


class Detection:
    """The detectors and the condition book, plus the event log they write to (ids from 1)."""

    def __init__(self, settings: DetectorSettings, xids: XidCatalog) -> None:
        self.settings = settings
        self.nodes = NodeHealthTracker(
            xids,
            heartbeat_misses=settings.heartbeat_misses,
            will_confirm_s=settings.will_confirm_s,
        )
        self.progress = ProgressTracker(
            k=settings.hang_k,
            floor_s=settings.hang_floor_s,
            startup_timeout_s=settings.startup_timeout_s,
        )
        self.book = ConditionBook()
        self.events: list[Event] = []
        self.by_id: dict[int, Event] = {}

    def record(self, events: Sequence[Event]) -> list[Event]:
        """Append events to the log; returns them with their ids (the store's job in the daemon)."""
        out = []
        for raw in events:
            ev = replace(raw, id=len(self.events) + 1)
            self.events.append(ev)
            self.by_id[len(self.events)] = ev
            out.append(ev)
        return out

    def observe(self, obs: Sequence[Observation]) -> tuple[list[Condition], list[Event]]:
        """Record the observations' events and move the conditions they name."""
        events = self.record([o.event for o in obs])
        changed = apply_observations(self.book, obs, [e.id or 0 for e in events])
        return changed, events
