"""Conditions, events and actions as plain data: what the detectors produce and policies consume.

An :class:`Event` is an append-only fact ("XID 79 on gpu 2 of n3 at t"). A
:class:`Condition` is the lasting state of one subject (a node or a run) for one type; it
changes only on a real transition. Policies decide on conditions plus event history and
return :class:`ActionRequest` objects; the supervisor carries them out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ConditionType(StrEnum):
    NODE_DEAD = "NodeDead"  # last will or missed heartbeats
    GPU_FATAL = "GpuFatal"  # a fatal GPU fault (XID class, ECC DBE, GPU lost...)
    NODE_UNHEALTHY = "NodeUnhealthy"  # some probe says unhealthy (fabric, storage, host)
    NODE_DEGRADED = "NodeDegraded"
    STRAGGLER = "Straggler"
    RUN_HUNG = "RunHung"


class EventKind(StrEnum):
    NODE_ONLINE = "node-online"
    NODE_OFFLINE = "node-offline"  # last will
    HEARTBEAT_MISSED = "heartbeat-missed"
    FAULT = "fault"  # one fault from an agent
    CONDITION_CHANGED = "condition-changed"
    RUN_STARTED = "run-started"
    RUN_PROGRESS_STALLED = "run-stalled"
    # where a run's progress is read from changed: a log parser chosen, a log unreadable or back
    RUN_PROGRESS_SOURCE = "progress-source"
    CHECKPOINT_SAVED = "checkpoint-saved"
    ATTEMPT_ENDED = "attempt-ended"
    STRAGGLER_FLAGGED = "straggler-flagged"
    STRAGGLER_CLEARED = "straggler-cleared"
    STAGE_IMBALANCE = "stage-imbalance"  # a partitioning finding, never a node fault
    ACTION = "action"  # an action was taken (or would have been)
    REJECTED_MESSAGE = "rejected-message"
    # the daemon stopped or resumed judging nodes by their silence (it could not hear them)
    VERDICTS_SUSPENDED = "verdicts-suspended"
    VERDICTS_RESUMED = "verdicts-resumed"


class ActionKind(StrEnum):
    DRAIN = "drain"
    UNDRAIN = "undrain"
    RESTART_RUN = "restart-run"
    CHECKPOINT_NOW = "checkpoint-now"
    ALERT = "alert"
    VET = "vet"


class Actor(StrEnum):
    RULE = "rule"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Event:
    """An append-only fact. ``node``/``run`` say what it is about; ``data`` is the evidence."""

    ts: float
    kind: EventKind
    node: str | None = None
    run: str | None = None
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    id: int | None = None  # assigned by the store


@dataclass(frozen=True)
class Condition:
    """Lasting state of ``subject`` for ``type``; ``since`` moves only on a real transition."""

    subject: str  # node name or run name
    type: ConditionType
    status: bool
    reason: str
    since: float
    evidence: tuple[int, ...] = ()  # event ids


@dataclass(frozen=True)
class ActionRequest:
    """What a rule (or an operator) asks the supervisor to do, with why."""

    kind: ActionKind
    actor: Actor
    reason: str
    node: str | None = None
    run: str | None = None
    rule: str | None = None
    who: str | None = None  # operator name for manual actions
    evidence: tuple[int, ...] = ()
    exclude: tuple[str, ...] = ()  # for restarts: nodes to keep out


class Verdict(StrEnum):
    """What became of one decision."""

    ALLOW = "allow"  # carry it out now
    BLOCK = "block"  # a guard refused it
    HOLD = "hold"  # deferred (cluster incident, backoff); retried when the cause clears
    DRY_RUN = "dry-run"  # recorded only
    QUEUED = "queued"  # waiting for an operator's approval


@dataclass(frozen=True)
class GuardVerdict:
    guard: str  # e.g. "max-drains-per-window", "run-fraction", "cooldown", "restart-budget"
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class Decision:
    """One action a policy wants, with every guard's verdict and the overall verdict."""

    request: ActionRequest
    verdict: Verdict
    guards: tuple[GuardVerdict, ...] = ()


@dataclass(frozen=True)
class NodeView:
    """What a policy may know about one node."""

    name: str
    run: str | None = None  # the run currently placed on it
    drained: bool = False
    drained_by_trainwarden: bool = False
    returned_at: float | None = None  # last time it was put back into service
    conditions: frozenset[ConditionType] = frozenset()
    causes: frozenset[str] = frozenset()  # shared causes of its current faults


@dataclass(frozen=True)
class RunView:
    """What a policy may know about one run."""

    name: str
    nodes: tuple[str, ...] = ()
    active: bool = True  # an attempt is running or being started
    attempt: int = 0
    restarts: int = 0
    restart_times: tuple[float, ...] = ()
    failure_steps: tuple[int | None, ...] = ()  # last step reached before each failure
    last_step: int | None = None


@dataclass(frozen=True)
class ActionRecordView:
    """An action already taken (for windows, cooldowns and budgets)."""

    ts: float
    kind: ActionKind
    node: str | None
    run: str | None
    verdict: Verdict


@dataclass(frozen=True)
class ClusterView:
    """Everything a policy may look at, as plain data at one instant."""

    now: float
    nodes: Mapping[str, NodeView]
    runs: Mapping[str, RunView]
    recent_actions: Sequence[ActionRecordView] = ()
    drained_nodes: int | None = None  # how many of ``nodes`` are drained, when known

    def drained_count(self) -> int:
        if self.drained_nodes is not None:
            return self.drained_nodes
        return sum(1 for n in self.nodes.values() if n.drained)


class IncidentKind(StrEnum):
    """Why automation stopped and a person should look."""

    CORRELATED = "correlated-failure"  # many nodes, one shared cause: a cluster event
    CRASH_LOOP = "crash-loop"  # the run keeps dying at the same step / right after restart
    RESTART_BUDGET = "restart-budget"  # too many restarts in the window
    LEMON_NODE = "lemon-node"  # failed again soon after being returned to service
    MASS_SILENCE = "mass-silence"  # many nodes silent at once: a network or broker cause


@dataclass(frozen=True)
class Incident:
    """Something automation will not fix by itself; ``cleared_at`` is None while open."""

    id: str
    kind: IncidentKind
    subject: str  # the shared cause, the run or the node
    opened_at: float
    detail: str
    nodes: tuple[str, ...] = ()
    cleared_at: float | None = None
    evidence: tuple[int, ...] = ()

    @property
    def open(self) -> bool:
        return self.cleared_at is None
