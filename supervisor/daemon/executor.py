"""Carrying out one allowed decision: drain, undrain, restart, checkpoint-now, alert.

Every scheduler failure becomes a failed action with the scheduler's own message; nothing
here raises into the daemon's loop.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from trainwarden.health.report import ControlMessage, control_topic, encode
from trainwarden.policies.model import ActionKind, Actor, Decision
from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.model.lifecycle import LifecycleError, NodePhase, RunPhase

if TYPE_CHECKING:  # the supervisor calls the executor; the executor only names its type
    from trainwarden.supervisor.daemon.supervisor import Supervisor

log = logging.getLogger(__name__)


def drain_reason(d: Decision, action_id: int) -> str:
    """The reason a scheduler shows (``sinfo -R``): names trainwarden, the cause, the action."""
    by = f"operator {d.request.who}" if d.request.actor is Actor.OPERATOR else "trainwarden"
    evidence = f" evidence #{','.join(map(str, d.request.evidence))}" if d.request.evidence else ""
    text = f"trainwarden: {d.request.reason} (action #{action_id} by {by}{evidence})"
    return text.replace('"', "'")[:250]


# Drains and resumes are idempotent in every back-end, so a transient scheduler failure
# (slurmctld restarting, a timeout) is retried; a submission is not (it may have gone in).
RETRYABLE_KINDS = frozenset({ActionKind.DRAIN, ActionKind.UNDRAIN})


async def attempt(sup: Supervisor, d: Decision, action_id: int) -> tuple[bool, str, bool]:
    """Carry the action out once: (ok, what happened, whether a retry is safe and useful)."""
    req = d.request
    try:
        if req.kind is ActionKind.DRAIN and req.node:
            return (*await _drain(sup, d, action_id), False)
        if req.kind is ActionKind.UNDRAIN and req.node:
            return (*await _undrain(sup, d), False)
        if req.kind is ActionKind.RESTART_RUN and req.run:
            return (*await _restart(sup, d), False)
        if req.kind is ActionKind.CHECKPOINT_NOW and req.run:
            return (*await _checkpoint_now(sup, d), False)
        if req.kind is ActionKind.ALERT:
            log.warning("ALERT %s%s: %s", req.node or "", req.run or "", req.reason)
            return True, "alert logged", False
        if req.kind is ActionKind.VET and req.node:
            return (*await _vet(sup, d), False)
    except SchedulerError as exc:
        return (
            False,
            f"{sup.scheduler.name} refused: {exc}",
            exc.retryable and req.kind in RETRYABLE_KINDS,
        )
    return False, f"{req.kind.value} needs a {'node' if req.node is None else 'run'}", False


async def _drain(sup: Supervisor, d: Decision, action_id: int) -> tuple[bool, str]:
    node = sup.state.node(d.request.node or "")
    reason = drain_reason(d, action_id)
    await sup.scheduler.drain(node.name, reason)
    node.drained_by = "operator" if d.request.actor is Actor.OPERATOR else "trainwarden"
    node.drain_reason = reason
    try:
        node.move(NodePhase.DRAINING)
        node.move(NodePhase.DRAINED)
    except LifecycleError as exc:
        log.warning("node %s: %s", node.name, exc)
    await sup.save_node(node)
    return True, f"{node.name} drained in {sup.scheduler.name}: {reason}"


async def _undrain(sup: Supervisor, d: Decision) -> tuple[bool, str]:
    node = sup.state.node(d.request.node or "")
    if d.request.actor is not Actor.OPERATOR and node.drained_by != "trainwarden":
        # never undrain automatically what trainwarden did not drain
        return False, (
            f"{node.name} was drained by {node.drained_by or 'someone else'}; "
            "only an operator may return it"
        )
    await sup.scheduler.resume(node.name)
    node.drained_by = None
    node.drain_reason = None
    node.returned_at = sup.clock.now()
    conditions = sup.core.returned(node.name, node.returned_at)
    try:
        node.move(NodePhase.HEALTHY)
    except LifecycleError as exc:
        log.warning("node %s: %s", node.name, exc)
    await sup.store.call(sup.store.store.save_conditions, conditions)
    await sup.save_node(node)
    return True, f"{node.name} returned to service"


async def _vet(sup: Supervisor, d: Decision) -> tuple[bool, str]:
    """Start vetting a node trainwarden drained: it returns to service once its agent has
    reported healthy for the vetting period with no condition set (see Supervisor.tick)."""
    node = sup.state.node(d.request.node or "")
    if node.drained_by != "trainwarden" and d.request.actor is not Actor.OPERATOR:
        return False, f"{node.name} was not drained by trainwarden; only an operator may vet it"
    try:
        node.move(NodePhase.VETTING)
    except LifecycleError as exc:
        return False, str(exc)
    node.vet_started_at = sup.clock.now()
    await sup.save_node(node)
    return True, (
        f"vetting {node.name}: back in service after "
        f"{sup.config.vet_period_s:.0f} s of healthy reports"
    )


async def _restart(sup: Supervisor, d: Decision) -> tuple[bool, str]:
    run = sup.state.runs.get(d.request.run or "")
    if run is None:
        return False, f"unknown run {d.request.run!r}"
    if run.phase in (RunPhase.COMPLETED, RunPhase.GAVE_UP):
        return True, f"run {run.name} is {run.phase.value}; nothing to restart"
    result = await sup.runs.restart(run, set(d.request.exclude), d.request.reason)
    return result.ok, result.detail


async def _checkpoint_now(sup: Supervisor, d: Decision) -> tuple[bool, str]:
    run = d.request.run or ""
    if sup.publish is None:
        return False, "no broker connection to ask the run for a checkpoint"
    msg = ControlMessage(
        run=run, command="checkpoint-now", request_id=uuid.uuid4().hex[:16], ts=sup.clock.now()
    )
    await sup.publish(control_topic(run), encode(msg))
    saved = await sup.wait_for_checkpoint(run, sup.config.checkpoint_wait_s)
    if saved:
        return True, "checkpoint saved"
    return False, f"no checkpoint within {sup.config.checkpoint_wait_s:.0f} s"
