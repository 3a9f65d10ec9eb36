"""Operations on a running supervisor beyond the message loop: loading state after a
restart, registering runs, and what follows an operator's drain or approval (finishing what
a crash left open is ``reconcile``'s)."""

from __future__ import annotations

import logging
from typing import Any

from trainwarden.health.probes.base import Fault, Severity
from trainwarden.policies.model import (
    ActionKind,
    ActionRecordView,
    Actor,
    Condition,
    Decision,
    Event,
    EventKind,
    Verdict,
)
from trainwarden.supervisor.daemon import incidents
from trainwarden.supervisor.daemon.context import with_id
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.decide.core import STICKY_FAULTS
from trainwarden.supervisor.errors import NotFoundError, SupervisorError
from trainwarden.supervisor.model.cluster import RunInfo, RunSpec
from trainwarden.supervisor.model.lifecycle import AttemptPhase, NodePhase, RunPhase
from trainwarden.supervisor.store.records import (
    ActionRecord,
    AttemptRecord,
    RunRecord,
)

log = logging.getLogger(__name__)


async def load(sup: Supervisor) -> None:
    """Rebuild memory from the store after a restart: nothing known is lost."""

    st = sup.store.store
    now = sup.clock.now()
    for rec in await sup.store.call(st.nodes):
        n = sup.state.node(rec.name)
        known = rec.state in NodePhase._value2member_map_
        n.restore(NodePhase(rec.state) if known else NodePhase.UNKNOWN)
        n.drained_by, n.drain_reason = rec.drained_by, rec.drain_reason
        n.last_heartbeat_at = rec.last_heartbeat_at
        if rec.last_heartbeat_at is not None:
            # give every known agent a full heartbeat window after our own restart
            sup.nodes.on_heartbeat(rec.name, now, sup.nodes.node(rec.name).interval_s)
    conditions = await sup.store.call(st.conditions)
    faults: dict[str, list[Fault]] = {}
    for c in conditions:
        if c.status and c.type in STICKY_FAULTS:
            events = await sup.store.call(
                st.events, node=c.subject, kinds=[EventKind.FAULT], limit=200
            )
            faults[c.subject] = [_fault_of(e) for e in events if e.ts >= c.since - 1.0]
    sup.core.restore(conditions, faults)
    await _settle_unconditioned_faults(sup, conditions, now)
    recent = await _restore_guard_history(sup, now)
    await incidents.restore(sup, now)
    for rec in await sup.store.call(st.runs):
        try:
            spec = RunSpec.from_dict(rec.spec)
        except Exception as exc:  # a damaged row must not stop the daemon
            log.error("run %s: cannot load its spec: %s", rec.name, exc)
            continue
        run = RunInfo(
            rec.name,
            rec.scheduler,
            spec,
            rec.created_at,
            phase=RunPhase(rec.state)
            if rec.state in RunPhase._value2member_map_
            else RunPhase.PENDING,
            attempt=rec.current_attempt,
            restarts=rec.restarts,
        )
        attempts = await sup.store.call(st.attempts, rec.name)
        _restore_run_memory(sup, run, attempts, recent)
        if attempts:
            await _restore_attempt(sup, run, attempts, now)
        cks = await sup.store.call(st.checkpoints, rec.name)
        if cks:
            newest = max(cks, key=lambda c: c.step)
            run.last_checkpoint_step, run.last_checkpoint_path = newest.step, newest.path
        sup.state.runs[run.name] = run
        sup.metrics.run_known(run.name)
    if sup.state.runs:
        sup.runs.prewarm()


FAULT_REPLAY_S = 3600.0  # how far back a fault stored without its condition is settled


async def _settle_unconditioned_faults(
    sup: Supervisor, conditions: list[Condition], now: float
) -> None:
    """Faults stored after their node's last condition change: the previous daemon stopped
    between recording a fault and its condition. They go through the tracker again under
    their stored ids (so the agent's next report of the same fault is not a new event) and
    set the condition they should have; the decision follows in ``reconcile``."""
    last: dict[str, float] = {}
    for c in conditions:
        last[c.subject] = max(last.get(c.subject, float("-inf")), c.since)
    events = await sup.store.call(sup.store.store.events, kinds=[EventKind.FAULT], limit=5000)
    changed: list[Condition] = []
    for ev in reversed(events):  # oldest first, as they happened
        if not ev.node or ev.id is None or now - ev.ts > FAULT_REPLAY_S:
            continue
        if ev.ts <= last.get(ev.node, float("-inf")):
            continue  # settled: a condition changed after it (or because of it)
        obs = sup.nodes.on_faults(ev.node, [_fault_of(ev)], ev.ts)
        changed += sup.core.conditions(obs, [ev.id] * len(obs))
        sup.update_phase(ev.node)
    if changed:
        log.warning(
            "%d fault(s) were stored without their condition (the daemon stopped between "
            "the two): %s",
            len(changed),
            ", ".join(f"{c.type.value} on {c.subject}" for c in changed),
        )
        await sup.store.write(sup.store.store.save_conditions, changed)


def _fault_of(ev: Event) -> Fault:
    d = ev.data
    gpu, code = d.get("gpu"), d.get("code")
    return Fault(
        str(d.get("kind", "")),
        Severity(str(d.get("severity", "fatal"))),
        str(d.get("detail", "")),
        gpu if isinstance(gpu, int) else None,
        code if isinstance(code, int) else None,
        d.get("cause") if isinstance(d.get("cause"), str) else None,
    )


async def _restore_attempt(
    sup: Supervisor, run: RunInfo, attempts: list[AttemptRecord], now: float
) -> None:
    """The run's newest attempt: its job, nodes and phase."""
    st = sup.store.store
    last = attempts[-1]
    run.job_id = last.job_id
    run.excluded = set(last.excluded)
    run.resumed_from_step = last.resumed_from_step
    run.last_step = last.last_step
    if last.state in AttemptPhase._value2member_map_:
        run.begin_attempt(AttemptPhase(last.state))
    # the attempts are the truth: a crash may come between storing an attempt and
    # the run's own row (two writes), leaving the run a step behind its last attempt
    if last.attempt > run.attempt:
        log.warning(
            "run %s: its row says attempt %d, its newest attempt is %d (job %s); "
            "taking the attempt",
            run.name,
            run.attempt,
            last.attempt,
            last.job_id,
        )
        run.attempt = last.attempt
        run.restarts = max(run.restarts, len(attempts) - 1)
        if run.phase is RunPhase.RESTARTING and run.attempt_phase in (
            AttemptPhase.SUBMITTED,
            AttemptPhase.RUNNING,
        ):
            run.move(RunPhase.RUNNING)
        await sup.store.write(
            st.update_run,
            run.name,
            state=run.phase.value,
            current_attempt=run.attempt,
            restarts=run.restarts,
        )
    sup.state.place(run, last.nodes)
    if run.attempt_phase in (AttemptPhase.SUBMITTED, AttemptPhase.RUNNING):
        sup.progress.start_attempt(run.name, run.attempt, now, run.spec.target_step)


def _restore_run_memory(
    sup: Supervisor, run: RunInfo, attempts: list[AttemptRecord], recent: list[ActionRecord]
) -> None:
    """What the crash-loop and backoff guards know of a run: when its attempts started and
    which restarts no node explained (with the step the attempt before had reached)."""
    run.restart_times = [a.started_at or a.submitted_at or 0.0 for a in attempts[1:]]
    run.failure_steps = [a.last_step for a in attempts[:-1]]
    failures: list[tuple[float, int | None]] = []
    for rec in recent:
        if rec.kind is not ActionKind.RESTART_RUN or rec.run != run.name or rec.exclude:
            continue
        before = [a for a in attempts if (a.submitted_at or 0.0) < rec.ts]
        failures.append((rec.ts, before[-1].last_step if before else None))
    if failures:
        sup.policy.restore_failures(run.name, failures)


def _restore_returns(sup: Supervisor, recent: list[ActionRecord]) -> None:
    """When each node was last returned to service (the lemon guard's window)."""
    for rec in recent:
        if rec.kind is ActionKind.UNDRAIN and rec.node and rec.status.value == "succeeded":
            sup.state.node(rec.node).returned_at = rec.finished_at or rec.ts


async def _restore_guard_history(sup: Supervisor, now: float) -> list[ActionRecord]:
    """The actions the guards count (drain windows, cooldowns, restart budgets and backoff,
    lemon windows) from the store, so a restart or a failover does not reset them."""
    g = sup.policy.policy.guards
    horizon = max(
        g.drains.window_s,
        g.cooldown_s,
        g.restarts.window_s,
        g.restarts.backoff_reset_s,
        g.lemon_window_s,
    )
    recs = await sup.store.call(sup.store.store.actions, since=now - horizon, limit=None)
    done = [
        rec
        for rec in reversed(recs)  # oldest first, as they happened
        if rec.verdict is Verdict.ALLOW and rec.status.value != "failed"
    ]
    for rec in done:
        sup.recent_actions.append(
            ActionRecordView(rec.ts, rec.kind, rec.node, rec.run, rec.verdict)
        )
    _restore_returns(sup, done)
    return done


async def add_run(
    sup: Supervisor, name: str, scheduler: str, spec: Any, who: str, *, submit: bool = True
) -> RunInfo:
    """Register a run and submit its first attempt, or (``submit=False``) wait to adopt the
    job already running under its tag (see periodic.adopt_tagged_jobs)."""

    now = sup.clock.now()
    run = RunInfo(name, scheduler, spec, now)
    await sup.store.call(
        sup.store.store.add_run,
        RunRecord(name=name, scheduler=scheduler, spec=spec.to_dict(), created_at=now),
    )
    sup.state.runs[name] = run
    sup.metrics.run_known(name)
    log.info(
        "run %s registered by %s (%s, %d nodes, command %s)%s",
        name,
        who,
        scheduler,
        spec.nodes,
        " ".join(spec.command)[:200],
        "" if submit else ", adopting its running job",
    )
    await sup.record_events(
        [
            Event(
                now,
                EventKind.RUN_STARTED,
                run=name,
                message=f"run registered by {who}"
                + ("" if submit else "; adopting its running job"),
                data={"who": who, "spec": spec.to_dict()},
            )
        ]
    )
    if not submit:
        return run
    result = await sup.runs.start(run)
    if not result.ok:
        log.error("run %s: %s", name, result.detail)
    return run


async def after_operator_drain(sup: Supervisor, node: str, action_id: int) -> None:
    """A person drained a node: the policy decides what happens to the run on it."""
    info = sup.state.nodes.get(node)
    if info is None or info.run is None:
        return
    run = sup.state.runs.get(info.run)
    if run is None or not run.active:
        return
    ev = Event(
        sup.clock.now(),
        EventKind.ACTION,
        node=node,
        run=run.name,
        message=f"node {node} of run {run.name} drained by an operator",
        data={
            "kind": ActionKind.DRAIN.value,
            "actor": Actor.OPERATOR.value,
            "action_id": action_id,
        },
    )
    [eid] = await sup.record_events([ev])
    sup.execute(sup.policy.on_event(with_id(ev, eid), sup.view(), sup.history))


async def _restarted_since(sup: Supervisor, rec: ActionRecord) -> str | None:
    """Why a queued restart must not be carried out on approval: an attempt of its run
    was submitted after it was decided (an operator's restart, say), and approving it
    would restart that one too."""
    if rec.kind is not ActionKind.RESTART_RUN or not rec.run:
        return None
    attempts = await sup.store.call(sup.store.store.attempts, rec.run)
    newer = [a for a in attempts if a.submitted_at is not None and a.submitted_at > rec.ts]
    if not newer:
        return None
    return (
        f"not carried out: attempt {newer[-1].attempt} of run {rec.run} was submitted after "
        "this restart was decided, and it would be restarted too"
    )


async def resolve_queued(
    sup: Supervisor, action_id: int, *, approve: bool, who: str, reason: str
) -> None:
    """An operator approves or rejects an action queued in ``approve`` mode."""

    st = sup.store.store
    rec = await sup.store.call(st.action, action_id)
    if rec is None:
        raise NotFoundError(f"unknown action {action_id}")
    if rec.verdict is not Verdict.QUEUED or rec.status.value != "pending":
        raise SupervisorError(
            f"action {action_id} is not waiting for approval (verdict {rec.verdict.value}, "
            f"status {rec.status.value})"
        )
    now = sup.clock.now()
    await sup.record_events(
        [
            Event(
                now,
                EventKind.ACTION,
                node=rec.node,
                run=rec.run,
                message=f"action {action_id} "
                f"{'approved' if approve else 'rejected'} by "
                f"{who}: {reason}",
                data={"action_id": action_id, "who": who, "approved": approve},
            )
        ]
    )
    queued = Decision(rec.request, Verdict.QUEUED, rec.guards)
    stale = await _restarted_since(sup, rec) if approve else None
    resolved = sup.policy.resolve(queued, approve and stale is None, sup.view(), who)
    if resolved.verdict is not Verdict.ALLOW:
        why = (
            reason
            if not approve
            else stale
            or "; ".join(g.detail for g in resolved.guards if not g.passed)
            or resolved.verdict.value
        )
        await sup.store.call(
            st.update_action,
            action_id,
            status="rejected" if not approve else "skipped",
            result=f"{'rejected' if not approve else 'approved'} by {who}: {why}",
            finished_at=now,
        )
        return
    await sup.store.call(
        st.update_action,
        action_id,
        status="approved",
        result=f"approved by {who}",
        finished_at=None,
        verdict=Verdict.ALLOW,
    )
    # the same executor as automatic actions: retry, audit result, metrics
    await sup.perform(resolved, action_id, note=f"approved by {who}")
