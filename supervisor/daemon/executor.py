"""Carrying out one allowed decision: drain, undrain, restart, checkpoint-now, alert.

Every scheduler failure becomes a failed action with the scheduler's own message; nothing
here raises into the daemon's loop.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from functools import partial

from trainwarden.health.report import ControlMessage, control_topic, encode
from trainwarden.policies.model import (
    ActionKind,
    ActionRecordView,
    ActionRequest,
    Actor,
    Decision,
    Event,
    EventKind,
    Verdict,
)
from trainwarden.supervisor.daemon.context import DaemonContext
from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.model.lifecycle import LifecycleError, NodePhase, RunPhase
from trainwarden.supervisor.store.base import StoreUnavailable
from trainwarden.supervisor.store.records import ActionStatus

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
FENCE_POLL_S = 1.0  # a retry that finds the lease not renewed looks again this often
FENCE_WAIT_S = 3600.0  # ... for this long: a daemon that lost its lease has exited by then


async def attempt(
    sup: DaemonContext, d: Decision, action_id: int, attempt_then: int | None = None
) -> tuple[bool, str, bool]:
    """Carry the action out once: (ok, what happened, whether a retry is safe and useful).
    ``attempt_then``: for a restart, the run's attempt when it was first carried out."""
    req = d.request
    try:
        if req.kind is ActionKind.DRAIN and req.node:
            return (*await _drain(sup, d, action_id), False)
        if req.kind is ActionKind.UNDRAIN and req.node:
            return (*await _undrain(sup, d), False)
        if req.kind is ActionKind.RESTART_RUN and req.run:
            return await _restart(sup, d, attempt_then)
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
    except Exception as exc:  # a bug here must fail the action, never leave it "running"
        log.exception("action %s %s: internal error", action_id, req.kind.value)
        return False, f"internal error: {type(exc).__name__}: {exc}", False
    return False, f"{req.kind.value} needs a {'node' if req.node is None else 'run'}", False


async def _drain(sup: DaemonContext, d: Decision, action_id: int) -> tuple[bool, str]:
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
    await sup.save_node(node, now=True)
    return True, f"{node.name} drained in {sup.scheduler.name}: {reason}"


async def _undrain(sup: DaemonContext, d: Decision) -> tuple[bool, str]:
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
    await sup.store.write(sup.store.store.save_conditions, conditions)
    await sup.save_node(node, now=True)
    return True, f"{node.name} returned to service"


async def _vet(sup: DaemonContext, d: Decision) -> tuple[bool, str]:
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
    await sup.save_node(node, now=True)
    return True, (
        f"vetting {node.name}: back in service after "
        f"{sup.config.vet_period_s:.0f} s of healthy reports"
    )


async def _restart(
    sup: DaemonContext, d: Decision, attempt_then: int | None
) -> tuple[bool, str, bool]:
    """A restart of the attempt that ran when it was carried out (a second one waiting on
    the run's lock meanwhile restarts nothing). It is retried only when it was refused
    because the running attempt's job could not be stopped (nothing was submitted); never
    after a submission failed, which may have reached the scheduler all the same."""
    run = sup.state.runs.get(d.request.run or "")
    if run is None:
        return False, f"unknown run {d.request.run!r}", False
    if run.phase in (RunPhase.COMPLETED, RunPhase.GAVE_UP):
        return True, f"run {run.name} is {run.phase.value}; nothing to restart", False
    result = await sup.runs.restart(
        run, set(d.request.exclude), d.request.reason, attempt=attempt_then
    )
    if result.ok:
        sup.metrics.run_restarted(run.name)
    elif result.untouched:  # a later failure of the attempt may restart it again
        sup.policy.restart_not_done(run.name)
    return result.ok, result.detail, result.retry


def _attempt_of(ctx: DaemonContext, d: Decision) -> int | None:
    """The run's attempt a restart is about (None for other actions, or an unknown run)."""
    run = ctx.state.runs.get(d.request.run or "")
    return run.attempt if run is not None and d.request.kind is ActionKind.RESTART_RUN else None


async def _checkpoint_now(sup: DaemonContext, d: Decision) -> tuple[bool, str]:
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


class Executor:
    """Records every decision before carrying it out, then does the allowed ones: automatic,
    manual and approved decisions alike get the retry, the audit result and the metrics."""

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self._held: dict[ActionRequest, int] = {}  # held decisions: released ones reuse the id

    def execute(self, decisions: Sequence[Decision]) -> None:
        if decisions:
            self.ctx.spawn(self._execute(list(decisions)))

    async def _execute(self, decisions: list[Decision]) -> None:
        """Record every decision first (so held ones are known before anything releases
        them), then carry out the allowed ones in the order the policy gave. While the
        database is away the decisions wait for it: none is carried out unrecorded."""
        if self.ctx.must_hold():
            self._hold(decisions)
            return
        ids: list[int] = []
        for n, d in enumerate(decisions):
            try:
                ids.append(await self._record(d))
            except StoreUnavailable:
                self._hold(decisions[n:])  # the recorded ones go ahead, in order
                break
        for d, action_id in zip(decisions, ids, strict=False):
            if d.verdict is Verdict.ALLOW:
                await self.perform(d, action_id)

    def _hold(self, decisions: list[Decision]) -> None:
        what = ", ".join(
            f"{d.request.kind.value} {d.request.node or d.request.run or ''}".strip()
            for d in decisions
        )
        self.ctx.hold(f"decisions: {what}", partial(self._execute, list(decisions)))

    async def carry_out(self, d: Decision) -> tuple[int, bool, str]:
        """Record one decision and, if allowed, do it. Returns (action id, ok, result)."""
        action_id = await self._record(d)
        if d.verdict is not Verdict.ALLOW:
            return action_id, True, d.verdict.value
        ok, result = await self.perform(d, action_id)
        return action_id, ok, result

    async def _record(self, d: Decision) -> int:
        now = self.ctx.clock.now()
        held = self._held.get(d.request)
        if held is not None:  # a decision the policy held earlier, now released or dropped
            action_id = held
            await self.ctx.store.call(
                self.ctx.store.store.update_action,
                action_id,
                status="pending" if d.verdict is Verdict.ALLOW else "skipped",
                result=f"released: {d.verdict.value}; "
                + "; ".join(f"{g.guard}: {g.detail}" for g in d.guards),
                finished_at=None if d.verdict is Verdict.ALLOW else now,
                verdict=d.verdict,
            )
            del self._held[d.request]  # only once the release is recorded
        else:
            action_id = await self.ctx.store.call(self.ctx.store.store.record_action, d, ts=now)
        if d.verdict is Verdict.HOLD:
            self._held[d.request] = action_id
        self.ctx.recent_actions.append(
            ActionRecordView(now, d.request.kind, d.request.node, d.request.run, d.verdict)
        )
        await self.ctx.record_events_later(
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
            self.ctx.metrics.action(d.request.kind.value, d.verdict.value, "skipped")
            log.info(
                "%s: recorded, not carried out (%s)", audit_line(d, action_id), d.verdict.value
            )
        return action_id

    async def perform(self, d: Decision, action_id: int, note: str = "") -> tuple[bool, str]:
        """Carry out a recorded, allowed decision: automatic, manual and approved ones alike
        get the retry of transient scheduler failures, the audit result and the metrics.
        ``note`` (e.g. who approved it) leads the recorded result."""
        fenced = self.ctx.fence()
        if fenced is not None:  # never act on a lease that may have run out
            await self.finish(d, action_id, False, f"{note}; {fenced}" if note else fenced)
            return False, fenced
        await self.ctx.store.write(
            self.ctx.store.store.update_action,
            action_id,
            status="running",
            result=None,
            finished_at=None,
        )
        attempt_then = _attempt_of(self.ctx, d)
        ok, result, retry = await attempt(self.ctx, d, action_id, attempt_then)
        if retry:
            result += f" (retrying up to {len(self.ctx.config.retry_delays_s)} times)"
        result = f"{note}; {result}" if note else result
        if retry:
            await self._failed_once(d, action_id, result)
            self.ctx.spawn(self._retry(d, action_id, note, attempt_then, written=result))
        else:
            await self.finish(d, action_id, ok, result)
        return ok, result

    async def _failed_once(self, d: Decision, action_id: int, result: str) -> None:
        """A try that failed with a retry to come: the action stays open (running) in the
        store, so that a daemon that dies before the retry leaves it to the next one's
        reconcile instead of dropping it; the engine learns the outcome once, at the end."""
        await self.ctx.store.write(
            self.ctx.store.store.update_action, action_id, status="running", result=result
        )
        self.ctx.metrics.action(d.request.kind.value, d.verdict.value, "failed")
        log.error("%s: failed: %s", audit_line(d, action_id), result)

    async def _retry(
        self,
        d: Decision,
        action_id: int,
        note: str = "",
        attempt_then: int | None = None,
        *,
        written: str | None = None,
    ) -> None:
        """Retry an action after a transient failure, with backoff: an idempotent one after
        a scheduler error, a restart the running job's failed stop refused (it restarts
        nothing once another restart started a newer attempt of the run). ``written``: the
        result this daemon last stored for it (open, running)."""
        for n, delay in enumerate(self.ctx.config.retry_delays_s, start=1):
            await self.ctx.clock.sleep(delay)
            if not await self._unfenced(d, action_id, n, written):
                return
            ok, result, again = await attempt(self.ctx, d, action_id, attempt_then)
            if ok or not again or n == len(self.ctx.config.retry_delays_s):
                result = f"retry {n}: {result}"
                await self.finish(d, action_id, ok, f"{note}; {result}" if note else result)
                return
            log.warning(
                "action %s %s: retry %d failed: %s", action_id, d.request.kind.value, n, result
            )
            written = f"{note}; retry {n}: {result}" if note else f"retry {n}: {result}"
            await self.ctx.store.write(  # still open; the result says what was tried
                self.ctx.store.store.update_action, action_id, status="running", result=written
            )

    async def _unfenced(
        self, d: Decision, action_id: int, n: int, written: str | None = None
    ) -> bool:
        """Wait while this daemon may not act (its lease not renewed: the database away).
        True once it may again and the action is still as this daemon left it (running,
        ``written``); False when another daemon finished it meanwhile (a leader that took
        over reconciled it), or after FENCE_WAIT_S without a lease (left open: a daemon that
        lost its lease exits, and the next leader's reconcile finishes it)."""
        fenced = self.ctx.fence()
        if fenced is None:
            return True
        log.warning(
            "action %s %s: retry %d waits until this daemon may act again: %s",
            action_id,
            d.request.kind.value,
            n,
            fenced,
        )
        for _ in range(int(FENCE_WAIT_S / FENCE_POLL_S)):
            await self.ctx.clock.sleep(FENCE_POLL_S)
            if self.ctx.fence() is not None:
                continue
            try:  # after this daemon's own waiting writes, so it sees what it last wrote
                now = await self.ctx.store.call(self.ctx.store.store.action, action_id)
            except StoreUnavailable:
                continue
            if now is None or now.status is not ActionStatus.RUNNING or now.result != written:
                log.warning(
                    "action %s %s: finished meanwhile by another daemon (%s); not retried",
                    action_id,
                    d.request.kind.value,
                    "gone" if now is None else now.status.value,
                )
                return False
            return True
        log.error(
            "action %s %s: retry %d not carried out after %.0f s without a lease; left open "
            "for the next daemon's reconcile",
            action_id,
            d.request.kind.value,
            n,
            FENCE_WAIT_S,
        )
        return False

    async def finish(self, d: Decision, action_id: int, ok: bool, result: str) -> None:
        """The action's end: its result in the store, the engine and the metrics."""
        done = self.ctx.clock.now()
        await self.ctx.store.write(
            self.ctx.store.store.update_action,
            action_id,
            status="succeeded" if ok else "failed",
            result=result,
            finished_at=done,
        )
        self.ctx.policy.record_result(d, ok, done)
        self.ctx.metrics.action(
            d.request.kind.value, d.verdict.value, "succeeded" if ok else "failed"
        )
        # the audit line: every action carried out, automatic or manual, with its outcome
        # (a retried one also logged each failed try before it)
        log.log(
            logging.INFO if ok else logging.ERROR,
            "%s: %s: %s",
            audit_line(d, action_id),
            "succeeded" if ok else "failed",
            result,
        )


def audit_line(d: Decision, action_id: int) -> str:
    """``action 12 drain nid001234 by rule gpu-fatal (allow), reason ...``: who did what to
    what, as the store records it."""
    req = d.request
    target = " ".join(t for t in (req.node, req.run) if t) or "-"
    by = f"operator {req.who}" if req.who else f"rule {req.rule}" if req.rule else req.actor.value
    return (
        f"action {action_id} {req.kind.value} {target} by {by} ({d.verdict.value}), "
        f"reason: {req.reason}"
    )
