"""Plain records that cross the store's API (never ORM objects).

Events, conditions and decisions use the policy layer's own dataclasses
(:mod:`trainwarden.policies.model`); what has no counterpart there is defined here. All
timestamps are seconds since the epoch, as the injected clock's ``now()`` gives them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from trainwarden.policies.model import (
    ActionKind,
    ActionRecordView,
    ActionRequest,
    Actor,
    Condition,
    Event,
    GuardVerdict,
    Verdict,
)


class ActionStatus(StrEnum):
    """Where the execution of a recorded action stands."""

    PENDING = "pending"  # allowed, queued for approval or held: not carried out yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    APPROVED = "approved"  # an operator approved a queued action
    REJECTED = "rejected"  # an operator rejected a queued action
    SKIPPED = "skipped"  # blocked by a guard or dry-run: recorded only, never carried out


def initial_status(verdict: Verdict) -> ActionStatus:
    """The status an action starts with, given its verdict."""
    if verdict in (Verdict.BLOCK, Verdict.DRY_RUN):
        return ActionStatus.SKIPPED
    return ActionStatus.PENDING


@dataclass(frozen=True)
class NodeRecord:
    """One compute node as the supervisor knows it."""

    name: str
    state: str = "unknown"  # healthy/suspect/failed/draining/drained/vetting/unknown
    scheduler_state: str | None = None
    drained_by: str | None = None  # trainwarden | operator | external
    drain_reason: str | None = None
    last_heartbeat_at: float | None = None
    last_report_at: float | None = None
    updated_at: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRecord:
    """A training run under supervision; ``spec`` holds what is needed to (re)submit it."""

    name: str
    scheduler: str  # local | slurm
    spec: Mapping[str, Any]
    created_at: float
    state: str = "pending"
    current_attempt: int = 0
    restarts: int = 0


@dataclass(frozen=True)
class AttemptRecord:
    """One submission of a run to the scheduler."""

    run: str
    attempt: int
    state: str = "submitted"
    job_id: str | None = None
    nodes: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    resumed_from: str | None = None
    resumed_from_step: int | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    first_step: int | None = None
    last_step: int | None = None


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint a run reported; ``valid`` is None until it has been validated."""

    run: str
    step: int
    path: str
    reported_at: float
    attempt: int | None = None
    valid: bool | None = None
    validated_at: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ActionRecord:
    """An action as recorded: the request, the verdict with its guards, and what came of it."""

    id: int
    ts: float
    kind: ActionKind
    actor: Actor
    reason: str
    verdict: Verdict
    status: ActionStatus
    who: str | None = None
    rule: str | None = None
    node: str | None = None
    run: str | None = None
    evidence: tuple[int, ...] = ()
    exclude: tuple[str, ...] = ()
    guards: tuple[GuardVerdict, ...] = ()
    result: str | None = None
    finished_at: float | None = None

    @property
    def request(self) -> ActionRequest:
        return ActionRequest(
            kind=self.kind,
            actor=self.actor,
            reason=self.reason,
            node=self.node,
            run=self.run,
            rule=self.rule,
            who=self.who,
            evidence=self.evidence,
            exclude=self.exclude,
        )

    def view(self) -> ActionRecordView:
        """The slice a policy looks at for windows, cooldowns and budgets."""
        return ActionRecordView(
            ts=self.ts, kind=self.kind, node=self.node, run=self.run, verdict=self.verdict
        )


@dataclass(frozen=True)
class IncidentRecord:
    """A cluster-wide incident (many nodes failing with one cause): alert and pause."""

    id: int
    kind: str
    cause: str
    opened_at: float
    closed_at: float | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.closed_at is None


@dataclass(frozen=True)
class Lease:
    """Who holds a named lease and until when."""

    name: str
    holder: str
    expires_at: float


@dataclass
class StoreBatch:
    """What the daemon's flusher collected since its last flush; written in ONE transaction.

    Heartbeats are coalesced per node (the latest wins), so thousands of nodes reporting
    every few seconds cost one row update per node per flush, not one write per message.
    """

    events: list[Event] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    heartbeats: dict[str, float] = field(default_factory=dict)
    nodes: list[NodeRecord] = field(default_factory=list)

    def add_events(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def heartbeat(self, node: str, ts: float) -> None:
        previous = self.heartbeats.get(node)
        if previous is None or ts > previous:
            self.heartbeats[node] = ts

    def __len__(self) -> int:
        return len(self.events) + len(self.conditions) + len(self.heartbeats) + len(self.nodes)

    def clear(self) -> None:
        self.events.clear()
        self.conditions.clear()
        self.heartbeats.clear()
        self.nodes.clear()
