"""Explicit lifecycles with transition tables: a node, a run and a run attempt.

An illegal move raises :class:`LifecycleError`; the caller logs it and keeps the old state,
so a confused input can never put a node into a state the table does not allow.
"""

from __future__ import annotations

from enum import StrEnum

from trainwarden.supervisor.errors import SupervisorError


class LifecycleError(SupervisorError):
    """A transition the table does not allow."""


class NodePhase(StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    FAILED = "failed"
    DRAINING = "draining"
    DRAINED = "drained"
    VETTING = "vetting"


_N = NodePhase
NODE_TRANSITIONS: dict[NodePhase, frozenset[NodePhase]] = {
    _N.UNKNOWN: frozenset({_N.HEALTHY, _N.SUSPECT, _N.FAILED, _N.DRAINING, _N.DRAINED}),
    _N.HEALTHY: frozenset({_N.SUSPECT, _N.FAILED, _N.DRAINING, _N.DRAINED}),
    _N.SUSPECT: frozenset({_N.HEALTHY, _N.FAILED, _N.DRAINING, _N.DRAINED}),
    # a failed node whose drain a guard blocked may come back by itself
    _N.FAILED: frozenset({_N.DRAINING, _N.DRAINED, _N.HEALTHY}),
    _N.DRAINING: frozenset({_N.DRAINED, _N.HEALTHY}),
    _N.DRAINED: frozenset({_N.VETTING, _N.HEALTHY}),
    _N.VETTING: frozenset({_N.HEALTHY, _N.DRAINED}),
}


class AttemptPhase(StrEnum):
    SUBMITTED = "submitted"
    RUNNING = "running"
    STOPPING = "stopping"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


_A = AttemptPhase
ATTEMPT_TRANSITIONS: dict[AttemptPhase, frozenset[AttemptPhase]] = {
    _A.SUBMITTED: frozenset({_A.RUNNING, _A.STOPPING, _A.FAILED, _A.COMPLETED, _A.STOPPED}),
    _A.RUNNING: frozenset({_A.STOPPING, _A.COMPLETED, _A.FAILED, _A.STOPPED}),
    _A.STOPPING: frozenset({_A.STOPPED, _A.FAILED, _A.COMPLETED}),
    _A.COMPLETED: frozenset(),
    _A.FAILED: frozenset(),
    _A.STOPPED: frozenset(),
}


class RunPhase(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RESTARTING = "restarting"
    HELD = "held"  # waiting: restart held by a guard or an incident
    COMPLETED = "completed"
    GAVE_UP = "gave-up"


_R = RunPhase
RUN_TRANSITIONS: dict[RunPhase, frozenset[RunPhase]] = {
    # the first submission or adoption; a failed first submission is held
    _R.PENDING: frozenset({_R.RUNNING, _R.HELD, _R.RESTARTING, _R.GAVE_UP}),
    _R.RUNNING: frozenset({_R.RESTARTING, _R.HELD, _R.COMPLETED, _R.GAVE_UP}),
    # a restart submits the next attempt, or is held (submission refused, guard, incident)
    _R.RESTARTING: frozenset({_R.RUNNING, _R.HELD, _R.COMPLETED, _R.GAVE_UP}),
    _R.HELD: frozenset({_R.RUNNING, _R.RESTARTING, _R.COMPLETED, _R.GAVE_UP}),
    _R.COMPLETED: frozenset(),
    _R.GAVE_UP: frozenset(),
}


def node_move(current: NodePhase, target: NodePhase) -> NodePhase:
    """Return ``target`` if the move is allowed (or a no-op), else raise."""
    if target == current or target in NODE_TRANSITIONS[current]:
        return target
    raise LifecycleError(f"node cannot go from {current} to {target}")


def run_move(current: RunPhase, target: RunPhase) -> RunPhase:
    if target == current or target in RUN_TRANSITIONS[current]:
        return target
    raise LifecycleError(f"run cannot go from {current} to {target}")


def attempt_move(current: AttemptPhase, target: AttemptPhase) -> AttemptPhase:
    if target == current or target in ATTEMPT_TRANSITIONS[current]:
        return target
    raise LifecycleError(f"run attempt cannot go from {current} to {target}")
