"""Operations on a running supervisor beyond the message loop: loading state after a
restart, registering runs, and what follows an operator's drain or approval."""

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
from trainwarden.supervisor.daemon import incidents, upkeep
from trainwarden.supervisor.daemon.context import with_id
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.decide.core import STICKY_FAULTS
from trainwarden.supervisor.errors import NotFoundError, SchedulerError, SupervisorError
from trainwarden.supervisor.model.cluster import RunInfo, RunSpec
from trainwarden.supervisor.model.lifecycle import AttemptPhase, NodePhase, RunPhase
from trainwarden.supervisor.scheduler.base import JobInfo, NodeState, SchedNode
from trainwarden.supervisor.store.records import (
    ActionRecord,
    ActionStatus,
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


async def reconcile(sup: Supervisor) -> int:
    """Finish, once, the actions a crash left open, against the scheduler's truth.

    Per node only the newest open drain or undrain counts (older ones are superseded). A
    drain the scheduler shows under this action's own reason is marked done; one that never
    reached it is carried out now; a node drained for another reason is left to whoever
    drained it. An undrain is carried out again (resuming is idempotent, and its side
    effects must happen). A restart is finished against the run's attempts and jobs (see
    ``_reconcile_restart``): exactly one new attempt. A held decision, or one that cannot be
    resumed safely (a checkpoint request), is closed with the reason. Then every active
    run's jobs are compared with the store (an unknown job is adopted or stopped), and the
    policy decides again on the stored conditions, so a decision the crash kept from being
    recorded is made now. Decisions queued for approval stay queued. Returns how many
    actions it closed.
    """
    st = sup.store.store
    open_: list[ActionRecord] = []
    for status in (ActionStatus.PENDING, ActionStatus.RUNNING, ActionStatus.APPROVED):
        open_ += await sup.store.call(st.actions, status=status, limit=None)
    queued = [a for a in open_ if a.verdict is Verdict.QUEUED]
    open_ = sorted((a for a in open_ if a.verdict is not Verdict.QUEUED), key=lambda a: a.id)
    try:
        sched = {n.name: n for n in await sup.scheduler.nodes()}
    except Exception as exc:  # the scheduler is away: leave them for the next start
        log.warning("cannot reconcile %d open action(s): %s", len(open_), exc)
        return 0
    closed = await _close_open(sup, open_, sched)
    await _reconcile_jobs(sup, {a.run for a in open_ if a.kind is ActionKind.RESTART_RUN})
    await upkeep.sync_scheduler(sup)  # drains the store missed, before deciding again
    await _decide_again(sup, queued)
    return closed


async def _close_open(
    sup: Supervisor, open_: list[ActionRecord], sched: dict[str, SchedNode]
) -> int:
    st = sup.store.store
    if not open_:
        return 0
    newest: dict[str, int] = {}
    for rec in open_:
        if rec.kind in (ActionKind.DRAIN, ActionKind.UNDRAIN) and rec.node:
            newest[rec.node] = rec.id
    now = sup.clock.now()

    async def close(rec: ActionRecord, why: str) -> None:
        await sup.store.call(
            st.update_action, rec.id, status="skipped", result=why, finished_at=now
        )

    for rec in open_:
        d = Decision(rec.request, Verdict.ALLOW, rec.guards)
        sn = sched.get(rec.node or "")
        if rec.verdict is Verdict.HOLD:
            await close(rec, "held when the daemon stopped; decided again from the conditions")
        elif rec.kind is ActionKind.RESTART_RUN and rec.run:
            await _reconcile_restart(sup, rec, d)
        elif rec.kind not in (ActionKind.DRAIN, ActionKind.UNDRAIN) or not rec.node:
            await sup.executor.finish(
                d, rec.id, False,
                f"interrupted by a daemon restart before it finished; not repeated "
                f"({rec.kind.value} is not safe to resume blindly)",
            )  # fmt: skip
        elif newest[rec.node] != rec.id:
            await close(rec, f"superseded by action #{newest[rec.node]} on {rec.node}")
        elif rec.kind is ActionKind.UNDRAIN:
            await sup.perform(d, rec.id, note="carried out again after a restart")
        else:
            other = await _reconcile_drain(sup, rec, d, sn)
            if other is not None:
                await close(rec, f"{rec.node} was drained otherwise meanwhile: {other}")
    log.info("closed %d action(s) left open by the previous daemon", len(open_))
    return len(open_)


async def _reconcile_restart(sup: Supervisor, rec: ActionRecord, d: Decision) -> None:
    """An open restart, against the store's attempts and the scheduler's jobs: done if an
    attempt was submitted after it was decided; a job of the run unknown to the store is the
    attempt it submitted before the crash (adopted, never submitted again); otherwise it
    never reached the scheduler and is carried out now. Exactly one new attempt either way."""
    run = sup.state.runs.get(rec.run or "")
    if run is None:
        await sup.executor.finish(d, rec.id, False, f"unknown run {rec.run!r}")
        return
    attempts = await sup.store.call(sup.store.store.attempts, run.name)
    # decided, then submitted: a restart takes time (it stops the attempt first)
    after = [a for a in attempts if a.submitted_at is not None and a.submitted_at > rec.ts]
    if after:
        a = after[-1]
        await sup.executor.finish(
            d, rec.id, True,
            f"reconciled after a daemon restart: attempt {a.attempt} (job {a.job_id}) was "
            "submitted by this restart",
        )  # fmt: skip
        return
    unknown = await _unknown_live_jobs(sup, run.name, {a.job_id for a in attempts if a.job_id})
    if unknown:
        newest = unknown[-1]
        await _stop_jobs(sup, run, unknown[:-1], f"a second unknown job beside {newest.job_id}")
        await sup.runs.adopt_next(
            run, newest, f"submitted by restart #{rec.id} before the daemon stopped"
        )
        await sup.executor.finish(
            d, rec.id, True,
            f"reconciled after a daemon restart: its job {newest.job_id} was running, "
            f"adopted as attempt {run.attempt}",
        )  # fmt: skip
        return
    await sup.perform(d, rec.id, note="carried out after a daemon restart (never submitted)")


async def _unknown_live_jobs(sup: Supervisor, run: str, known: set[str]) -> list[JobInfo]:
    """Unfinished jobs tagged for ``run`` that no stored attempt names, oldest first."""
    out: list[JobInfo] = []
    for job_id, name in await sup.scheduler.jobs_tagged():
        if name != run or job_id in known:
            continue
        info = await sup.scheduler.job(job_id)
        if info is not None and not info.state.finished:
            out.append(info)
    return sorted(out, key=lambda i: (len(i.job_id), i.job_id))


async def _stop_jobs(sup: Supervisor, run: RunInfo, jobs: list[JobInfo], why: str) -> None:
    for info in jobs:
        try:
            await sup.scheduler.cancel(info.job_id)
        except SchedulerError as exc:
            log.error("run %s: cannot stop job %s: %s", run.name, info.job_id, exc)
            continue
        await sup.record_events_later(
            [
                Event(
                    sup.clock.now(),
                    EventKind.ACTION,
                    run=run.name,
                    message=f"stopped job {info.job_id} of run {run.name}, unknown to the "
                    f"store ({why}): never two attempts of one run at once",
                    data={"job_id": info.job_id, "stopped": True},
                )
            ]
        )


async def _reconcile_jobs(sup: Supervisor, done: set[str | None]) -> None:
    """Every active run: a job of it running but unknown to the store is adopted as the
    next attempt when the known attempt is over, and stopped when the known one runs."""
    for run in list(sup.state.runs.values()):
        if run.name in done or not run.active or run.job_id is None:
            continue  # a run waiting to adopt its first job is the upkeep's
        try:
            attempts = await sup.store.call(sup.store.store.attempts, run.name)
            unknown = await _unknown_live_jobs(
                sup, run.name, {a.job_id for a in attempts if a.job_id}
            )
            if not unknown:
                continue
            current = await sup.scheduler.job(run.job_id)
        except SchedulerError as exc:
            log.warning("run %s: cannot compare its jobs with the scheduler: %s", run.name, exc)
            continue
        if current is not None and not current.state.finished:
            await _stop_jobs(sup, run, unknown, f"attempt {run.attempt} is job {run.job_id}")
            continue
        await _stop_jobs(sup, run, unknown[:-1], f"a second unknown job beside {unknown[-1]}")
        await sup.runs.adopt_next(
            run, unknown[-1], "found running after a daemon restart, unknown to the store"
        )


async def _decide_again(sup: Supervisor, queued: list[ActionRecord]) -> None:
    """The conditions the store holds, decided again: a decision the previous daemon had
    not recorded when it stopped is made now. What was done already is not done twice (a
    drained node is not drained again, a run's restarted attempt no longer holds the node);
    subjects with a decision awaiting approval are left to it."""
    waiting = {a.node for a in queued} | {a.run for a in queued}
    active = [c for c in sup.book.active() if c.subject not in waiting]
    if not active:
        return
    sup.execute(sup.core.decide(active, [], sup.view(), sup.history))


async def _reconcile_drain(
    sup: Supervisor, rec: ActionRecord, d: Decision, sn: SchedNode | None
) -> str | None:
    """An open drain: done if the scheduler shows this action's own drain, carried out if
    the node is not drained; the scheduler's reason when someone else drained it."""
    if sn is None or sn.state not in (NodeState.DRAINED, NodeState.DRAINING):
        await sup.perform(d, rec.id, note="re-applied after a restart")
        return None
    # the reason names the action, unless a long cause pushed it past the 250 characters
    ours = f"action #{rec.id} " in sn.reason or sn.reason.startswith(
        f"trainwarden: {rec.reason}"[:120]
    )
    if not ours:
        return sn.reason or "(no reason given)"
    node = sup.state.node(rec.node or "")
    node.drained_by = "operator" if rec.actor is Actor.OPERATOR else "trainwarden"
    node.drain_reason = sn.reason
    node.restore(NodePhase.DRAINED)
    await sup.save_node(node, now=True)
    shows = f"{sup.scheduler.name} shows {node.name} drained by it"
    await sup.executor.finish(d, rec.id, True, f"reconciled after a restart: {shows}")
    return None


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
    resolved = sup.policy.resolve(queued, approve, sup.view(), who)
    if resolved.verdict is not Verdict.ALLOW:
        why = (
            reason
            if not approve
            else "; ".join(g.detail for g in resolved.guards if not g.passed)
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
