"""Finishing, once, what a crash left half done: open actions against the scheduler's truth,
jobs the store does not know, and decisions that were never recorded (see ``reconcile``)."""

from __future__ import annotations

import logging

from trainwarden.policies.model import ActionKind, Actor, Decision, Event, EventKind, Verdict
from trainwarden.supervisor.daemon import upkeep
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.model.cluster import RunInfo
from trainwarden.supervisor.model.lifecycle import NodePhase
from trainwarden.supervisor.scheduler.base import JobInfo, NodeState, SchedNode
from trainwarden.supervisor.store.records import ActionRecord, ActionStatus

log = logging.getLogger(__name__)


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
    oldest_ts = min(r.ts for r in open_)  # what came after the oldest open action
    for node in list(newest):  # a newer one carried out meanwhile supersedes it too (an
        # operator's undrain while a drain waited for its retry)
        done = await sup.store.call(
            st.actions, node=node, status=ActionStatus.SUCCEEDED, since=oldest_ts, limit=None
        )
        newer = [a.id for a in done if a.kind in (ActionKind.DRAIN, ActionKind.UNDRAIN)]
        newest[node] = max([newest[node], *newer])
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
    never reached the scheduler and is carried out now: the old attempt's job is cancelled
    first (even one stored stopped), and if it cannot be, the restart fails with the reason
    and submits nothing. Exactly one new attempt, never two jobs at once."""
    run = sup.state.runs.get(rec.run or "")
    if run is None:
        await sup.executor.finish(d, rec.id, False, f"unknown run {rec.run!r}")
        return
    attempts = await sup.store.call(sup.store.store.attempts, run.name)
    # decided, then submitted: a restart takes time (it stops the attempt first)
    after = [a for a in attempts if a.submitted_at is not None and a.submitted_at > rec.ts]
    if after:
        a = after[-1]
        announced = await sup.store.call(
            sup.store.store.events, run=run.name, kinds=[EventKind.RUN_STARTED], limit=50
        )
        if not any(e.data.get("attempt") == a.attempt for e in announced):
            # stored, then the daemon died before its run-started event: recorded now
            before = [b for b in attempts if b.attempt < a.attempt]
            in_job = bool(before) and before[-1].job_id == a.job_id
            await sup.runs.announce_stored(run, a, in_job=in_job)
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
