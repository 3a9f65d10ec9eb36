"""A restart whose cancel fails (scancel refused: slurmctld down, a timeout) does not go on:
the attempt is not stored stopped while its job may still run, nothing is submitted beside
it, and the action fails naming the job and the scheduler's error. A daemon killed after
such a cancel leaves its restart open; the next one cancels the job before it submits. Never
two jobs of one run at once.

In-process, virtual time, a real SQLite store and the local scheduler running real (idle)
processes, outliving the daemon as slurmctld does; the crash is an exception no handler
catches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_crash_reconcile import SPEC, alive, live_jobs, next_daemon
from test_decision_path import NODES, closing, make, policy_file, settle

from trainwarden.health.clock import VirtualClock
from trainwarden.policies.model import (
    ActionKind,
    ActionRequest,
    Actor,
    Decision,
    Event,
    EventKind,
    Verdict,
)
from trainwarden.supervisor.daemon import operations
from trainwarden.supervisor.daemon.runs import RunManager
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.detectors.progress import ProgressTracker
from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.model.cluster import ClusterState, RunInfo, RunSpec
from trainwarden.supervisor.model.lifecycle import AttemptPhase, RunPhase
from trainwarden.supervisor.scheduler.base import JobInfo, JobSpec, JobState, NodeState, SchedNode
from trainwarden.supervisor.scheduler.local import LocalScheduler

__all__ = ["closing"]  # the fixture, shared with test_decision_path
SCANCEL = "scancel: Unable to contact slurm controller (connect failure)"


class Killed(BaseException):
    """SIGKILL: nothing catches it, nothing after it runs."""


class UnreachableController(LocalScheduler):
    """The local back-end whose next ``cancel_failures`` cancels fail as scancel does while
    slurmctld does not answer: the job is not touched."""

    cancel_failures = 0

    async def cancel(self, job_id: str) -> None:
        if self.cancel_failures:
            self.cancel_failures -= 1
            raise SchedulerError(SCANCEL, retryable=True)
        await super().cancel(job_id)


@pytest.fixture
async def sched(tmp_path: Path) -> AsyncIterator[UnreachableController]:
    s = UnreachableController(NODES[:4], tmp_path / "logs", stop_grace_s=5.0)
    yield s
    s.cancel_failures = 0
    for job_id, _ in await s.jobs_tagged():
        await s.cancel(job_id)


async def running_run(
    tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor]
) -> tuple[Supervisor, Decision, int]:
    """A daemon whose run r1 runs attempt 1 (job local-1 on n1, n2) and that has recorded a
    restart of it without n1; carrying it out is up to the test."""
    sup = await make(tmp_path, policy_file(tmp_path), scheduler=sched)
    closing.append(sup)
    await operations.add_run(sup, "r1", "local", SPEC, "test")
    return (sup, *await recorded_restart(sup))


async def recorded_restart(sup: Supervisor) -> tuple[Decision, int]:
    req = ActionRequest(
        ActionKind.RESTART_RUN, Actor.RULE, "GpuFatal set on n1", run="r1", exclude=("n1",)
    )
    d = Decision(req, Verdict.ALLOW, ())
    action = sup.store.store.record_action(d, ts=sup.clock.now())
    sup.clock.advance(1.0)  # type: ignore[attr-defined]  # virtual time: a restart takes some
    return d, action


def die_after_the_cancel(
    sup: Supervisor, sched: LocalScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon is killed at its next durable step after the cancel: the submission of
    the next attempt, or the action's result, whichever it reaches first."""
    submit = sched.submit

    async def dying_submit(spec: JobSpec) -> str:
        monkeypatch.setattr(sched, "submit", submit)
        raise Killed("before the submission")

    async def dying_finish(*args: Any) -> None:
        raise Killed("before the action's result")

    monkeypatch.setattr(sched, "submit", dying_submit)
    sup.executor.finish = dying_finish  # type: ignore[method-assign]
    sup.executor._failed_once = dying_finish  # type: ignore[method-assign]  # a retry's note


def attempt_states(sup: Supervisor) -> list[tuple[int, str | None, str]]:
    return [(a.attempt, a.job_id, a.state) for a in sup.store.store.attempts("r1")]


async def test_a_failed_cancel_stops_the_restart_and_the_attempt_runs_on(
    tmp_path: Path, sched: UnreachableController, closing: list[Supervisor]
) -> None:
    sup, d, action = await running_run(tmp_path, sched, closing)
    sched.cancel_failures = 1
    told: list[str] = []
    sup.policy.restart_not_done = told.append  # type: ignore[method-assign]
    ok, result = await sup.perform(d, action)
    assert not ok, result
    assert "local-1" in result and SCANCEL in result and "attempt 1" in result
    assert told == ["r1"]  # the engine may decide a restart of attempt 1 again
    assert await live_jobs(sched) == ["local-1"] and alive(sched, "local-1")
    assert [(a, j) for a, j, _ in attempt_states(sup)] == [(1, "local-1")]
    assert attempt_states(sup)[0][2] != "stopped"
    rec = sup.store.store.action(action)  # open until its retries are done
    assert rec is not None and rec.status == "running" and SCANCEL in (rec.result or "")
    assert "retrying" in (rec.result or "")
    run = sup.state.runs["r1"]
    assert (run.attempt, run.job_id, run.restarts) == (1, "local-1", 0)
    assert run.phase is RunPhase.RUNNING and run.attempt_phase is not AttemptPhase.STOPPED
    progress = sup.progress.get("r1")
    assert progress is not None and progress.active  # a hang of attempt 1 is still caught
    await sup.tick()  # the event reaches the store
    said = [
        e.message
        for e in sup.store.store.events(run="r1", limit=50)
        if e.kind is EventKind.ACTION and "local-1" in e.message and SCANCEL in e.message
    ]
    assert said, sup.store.store.events(run="r1", limit=50)
    # slurmctld answers again: the restart's retry stops job local-1, then submits one attempt
    await settle(sup)
    assert await live_jobs(sched) == ["local-2"] and not alive(sched, "local-1")
    assert attempt_states(sup)[0] == (1, "local-1", "stopped")
    assert [(a, j) for a, j, _ in attempt_states(sup)] == [(1, "local-1"), (2, "local-2")]
    rec = sup.store.store.action(action)
    assert rec is not None and rec.status == "succeeded"
    assert (rec.result or "").startswith("retry 1: ")
    assert sup.state.runs["r1"].restarts == 1


async def test_a_daemon_killed_after_a_failed_cancel_never_runs_two_jobs(
    tmp_path: Path,
    sched: UnreachableController,
    closing: list[Supervisor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The next daemon finds the restart open; it cancels job local-1 before it submits."""
    sup, d, action = await running_run(tmp_path, sched, closing)
    sched.cancel_failures = 1
    die_after_the_cancel(sup, sched, monkeypatch)
    with pytest.raises(Killed):
        await sup.perform(d, action)
    monkeypatch.undo()  # the scheduler outlives the daemon as it is
    assert await live_jobs(sched) == ["local-1"]
    assert attempt_states(sup)[-1][2] != "stopped"  # the store says what is true
    again = await next_daemon(tmp_path, sched, closing)
    assert await live_jobs(sched) == ["local-2"] and not alive(sched, "local-1")
    assert [(a, j) for a, j, _ in attempt_states(again)] == [(1, "local-1"), (2, "local-2")]
    rec = again.store.store.action(action)
    assert rec is not None and rec.status == "succeeded", rec


async def test_the_next_daemon_whose_cancel_fails_too_submits_nothing(
    tmp_path: Path,
    sched: UnreachableController,
    closing: list[Supervisor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup, d, action = await running_run(tmp_path, sched, closing)
    sched.cancel_failures = 1
    die_after_the_cancel(sup, sched, monkeypatch)
    with pytest.raises(Killed):
        await sup.perform(d, action)
    monkeypatch.undo()  # the scheduler outlives the daemon as it is
    sched.cancel_failures = 10  # slurmctld still away when the next daemon starts, and after
    again = await next_daemon(tmp_path, sched, closing)
    assert await live_jobs(sched) == ["local-1"] and alive(sched, "local-1")
    assert [(a, j) for a, j, _ in attempt_states(again)] == [(1, "local-1")]
    rec = again.store.store.action(action)
    assert rec is not None and rec.status == "failed", rec
    assert "local-1" in (rec.result or "") and SCANCEL in (rec.result or "")
    retries = len(again.config.retry_delays_s)
    assert f"; retry {retries}: not restarted" in (rec.result or "")  # each one refused too
    assert sched.cancel_failures == 10 - 1 - retries
    run = again.state.runs["r1"]
    assert (run.attempt, run.phase) == (1, RunPhase.RUNNING)


async def test_an_attempt_stored_stopped_while_its_job_runs_is_cancelled_first(
    tmp_path: Path, sched: UnreachableController, closing: list[Supervisor]
) -> None:
    """What a daemon before this fix left when its scancel failed and it died before the
    resubmission: attempt 1 stored stopped, job local-1 running, the restart open."""
    sup, _, action = await running_run(tmp_path, sched, closing)
    now = sup.clock.now()
    sup.store.store.update_attempt(
        "r1", 1, state="stopped", ended_at=now, end_reason="stopped by trainwarden: GpuFatal"
    )
    assert await live_jobs(sched) == ["local-1"]
    again = await next_daemon(tmp_path, sched, closing)
    assert await live_jobs(sched) == ["local-2"] and not alive(sched, "local-1")
    assert [(a, j) for a, j, _ in attempt_states(again)] == [(1, "local-1"), (2, "local-2")]
    rec = again.store.store.action(action)
    assert rec is not None and rec.status == "succeeded", rec


async def test_an_operator_stop_whose_cancel_fails_says_so(
    tmp_path: Path, sched: UnreachableController, closing: list[Supervisor]
) -> None:
    sup, _, _ = await running_run(tmp_path, sched, closing)
    sched.cancel_failures = 1
    why = await sup.runs.stop(sup.state.runs["r1"], "operator stop")
    assert why is not None and "local-1" in why and SCANCEL in why
    assert await live_jobs(sched) == ["local-1"]
    assert attempt_states(sup)[0][2] != "stopped"
    assert await sup.runs.stop(sup.state.runs["r1"], "operator stop") is None
    assert await live_jobs(sched) == [] and attempt_states(sup)[0][2] == "stopped"


class _OneJob:
    """A scheduler with one job, whose cancel and whose state after it are the test's."""

    name = "fake"

    def __init__(self, cancel_fails: bool, after: JobState | None, query_fails: bool) -> None:
        self.cancel_fails = cancel_fails
        self.after = after  # the job's state once cancel was called (None: unknown to it)
        self.query_fails = query_fails
        self.submitted: list[JobSpec] = []
        self.cancel_called = False

    async def nodes(self) -> list[SchedNode]:
        return [SchedNode(n, NodeState.IDLE) for n in ("n1", "n2")]

    async def submit(self, spec: JobSpec) -> str:
        self.submitted.append(spec)
        return str(len(self.submitted))

    async def cancel(self, job_id: str) -> None:
        self.cancel_called = True
        if self.cancel_fails:
            raise SchedulerError(SCANCEL, retryable=True)

    async def job(self, job_id: str) -> JobInfo | None:
        if job_id != "1" or not self.cancel_called:
            return JobInfo(job_id, JobState.RUNNING, ("n1",))
        if self.query_fails:
            raise SchedulerError("scontrol show job: Socket timed out")
        return None if self.after is None else JobInfo(job_id, self.after, ("n1",))

    async def drain(self, node: str, reason: str) -> None:
        return None

    async def resume(self, node: str) -> None:
        return None

    async def job_log(self, job_id: str) -> str | None:
        return None

    async def jobs_tagged(self) -> list[tuple[str, str]]:
        return []


@pytest.mark.parametrize(
    ("cancel_fails", "after", "query_fails", "refused"),
    [
        (True, None, False, None),  # the job is gone all the same: restarted
        (True, JobState.CANCELLED, False, None),  # a timed-out scancel that went through
        (True, JobState.RUNNING, False, "it is still running"),
        (True, JobState.PENDING, False, "it is still pending"),  # it may start any moment
        (True, JobState.RUNNING, True, "cannot tell whether it runs"),
        (False, JobState.RUNNING, False, "still running 1 s after its cancel"),
        (False, JobState.COMPLETING, False, None),  # being taken down: its nodes are held
        (False, JobState.RUNNING, True, "still not seen"),
    ],
)
async def test_the_restart_goes_on_only_once_the_job_is_gone(
    tmp_path: Path,
    cancel_fails: bool,
    after: JobState | None,
    query_fails: bool,
    refused: str | None,
) -> None:
    sched = _OneJob(cancel_fails, after, query_fails)
    events: list[Event] = []
    stored: list[dict[str, Any]] = []

    async def emit(batch: list[Event]) -> None:
        events.extend(batch)

    async def save_attempt(run: RunInfo, fields: dict[str, Any]) -> None:
        stored.append(fields)

    async def observe(batch: list[Any]) -> None:
        return None

    manager = RunManager(
        ClusterState(),
        sched,  # type: ignore[arg-type]
        VirtualClock(1_800_000_000.0),
        ProgressTracker(),
        emit,
        save_attempt,
        observe,
        stop_timeout_s=1.0,
    )
    spec = RunSpec(command=("t",), nodes=1, checkpoint_dir=str(tmp_path))
    run = RunInfo("r1", "fake", spec, created_at=1_800_000_000.0)
    assert (await manager.start(run)).ok
    run.move_attempt(AttemptPhase.RUNNING)
    result = await manager.restart(run, set(), "test")
    if refused is None:
        assert result.ok, result
        assert len(sched.submitted) == 2 and run.attempt == 2
        assert any(f.get("state") == "stopped" for f in stored)
        return
    assert not result.ok and refused in result.detail and "job 1 (attempt 1)" in result.detail
    assert len(sched.submitted) == 1 and not any(f.get("state") == "stopped" for f in stored)
    assert (run.attempt, run.attempt_phase, run.phase) == (
        1,
        AttemptPhase.RUNNING,
        RunPhase.RUNNING,
    )
    [event] = [e for e in events if e.kind is EventKind.ACTION]
    assert event.data["stopped"] is False and refused in event.message


async def test_a_retried_restart_restarts_nothing_once_another_started_a_newer_attempt(
    tmp_path: Path, sched: UnreachableController, closing: list[Supervisor]
) -> None:
    """The first restart is refused (the cancel failed) and will be retried; a second
    restart of the same attempt (an operator's, a hang's) gets through first. The retry
    then finds attempt 2 running and submits nothing: one restart for one failure."""
    sup, d, action = await running_run(tmp_path, sched, closing)
    sched.cancel_failures = 1
    d2, second = await recorded_restart(sup)
    # whichever takes the run's lock first is refused (its retry spawned), the other waits
    # for the lock and restarts
    outcomes = await asyncio.gather(sup.perform(d, action), sup.perform(d2, second))
    [(refused, said)] = [
        (a, r) for a, (ok, r) in zip((action, second), outcomes, strict=True) if not ok
    ]
    assert SCANCEL in said and "retrying" in said
    assert [ok for ok, _ in outcomes].count(True) == 1
    await settle(sup)  # the refused one's retries
    assert await live_jobs(sched) == ["local-2"]
    assert [(a, j) for a, j, _ in attempt_states(sup)] == [(1, "local-1"), (2, "local-2")]
    rec = sup.store.store.action(refused)
    assert rec is not None and rec.status == "failed"
    assert "retry 1: not restarted: attempt 2 of run r1 started since" in (rec.result or "")
    assert sup.state.runs["r1"].restarts == 1


async def test_two_restarts_of_one_attempt_at_once_restart_it_once(
    tmp_path: Path, sched: UnreachableController, closing: list[Supervisor]
) -> None:
    """Two rules (a fatal XID and a hang) decide a restart of attempt 1 at the same moment:
    the second waits for the run's lock and then finds attempt 2 already started."""
    sup, d, action = await running_run(tmp_path, sched, closing)
    d2, second = await recorded_restart(sup)
    (ok, result), (ok2, result2) = await asyncio.gather(
        sup.perform(d, action), sup.perform(d2, second)
    )
    assert [ok, ok2].count(True) == 1, (result, result2)
    assert "attempt 2 of run r1 started since" in (result2 if ok else result)
    await settle(sup)
    assert await live_jobs(sched) == ["local-2"]
    assert [(a, j) for a, j, _ in attempt_states(sup)] == [(1, "local-1"), (2, "local-2")]
    assert sup.state.runs["r1"].restarts == 1


async def test_a_daemon_killed_while_a_refused_restart_waits_for_its_retry(
    tmp_path: Path, sched: UnreachableController, closing: list[Supervisor]
) -> None:
    """The retry lived only in the dead daemon's memory: the action it left open (running,
    its result saying a retry would come) is finished by the next daemon's reconcile,
    once: job local-1 cancelled, then one new attempt."""
    sup, d, action = await running_run(tmp_path, sched, closing)
    sched.cancel_failures = 1
    ok, result = await sup.perform(d, action)
    assert not ok and "retrying" in result
    for task in list(sup.tasks):  # SIGKILL: the retry never runs
        task.cancel()
    rec = sup.store.store.action(action)
    assert rec is not None and rec.status == "running"
    again = await next_daemon(tmp_path, sched, closing)
    assert await live_jobs(sched) == ["local-2"] and not alive(sched, "local-1")
    assert [(a, j) for a, j, _ in attempt_states(again)] == [(1, "local-1"), (2, "local-2")]
    rec = again.store.store.action(action)
    assert rec is not None and rec.status == "succeeded", rec
    assert "carried out after a daemon restart" in (rec.result or "")
    assert again.state.runs["r1"].restarts == 1


async def test_a_retry_waits_while_the_lease_is_not_renewed_and_never_closes_the_action(
    tmp_path: Path,
    sched: UnreachableController,
    closing: list[Supervisor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database is away while a refused restart waits for its retry, so the leader
    lease is not renewed: the retry neither acts nor closes the action (closed failed, the
    restart would be dropped once the same daemon renews its lease). It goes on once the
    lease is renewed."""
    sup, d, action = await running_run(tmp_path, sched, closing)
    sched.cancel_failures = 1
    ok, _ = await sup.perform(d, action)
    assert not ok
    looks = iter(["not carried out: the leader lease may have run out"] * 5)
    sup.fence = lambda: next(looks, None)  # five looks fenced, then renewed
    await settle(sup)
    assert "waits until this daemon may act again" in caplog.text
    assert await live_jobs(sched) == ["local-2"] and not alive(sched, "local-1")
    rec = sup.store.store.action(action)
    assert rec is not None and rec.status == "succeeded" and "retry 1: " in (rec.result or "")
    assert sup.state.runs["r1"].restarts == 1


async def test_a_queued_restart_approved_after_an_operators_restart_restarts_nothing(
    tmp_path: Path, sched: UnreachableController, closing: list[Supervisor]
) -> None:
    """Approve mode: a restart of attempt 1 waits for approval; an operator restarts the
    run by hand meanwhile (attempt 2). Approving the queued one must not restart attempt 2:
    it is closed as skipped, naming the newer attempt."""
    sup, _, _ = await running_run(tmp_path, sched, closing)
    req = ActionRequest(ActionKind.RESTART_RUN, Actor.RULE, "RunHung set on r1", run="r1")
    queued = sup.store.store.record_action(Decision(req, Verdict.QUEUED, ()), ts=sup.clock.now())
    sup.clock.advance(30.0)  # type: ignore[attr-defined]
    by_hand = ActionRequest(
        ActionKind.RESTART_RUN, Actor.OPERATOR, "moving it", run="r1", who="bob"
    )
    manual = Decision(by_hand, Verdict.ALLOW, ())
    ok, result = await sup.perform(
        manual, sup.store.store.record_action(manual, ts=sup.clock.now())
    )
    assert ok, result
    sup.clock.advance(30.0)  # type: ignore[attr-defined]
    await operations.resolve_queued(sup, queued, approve=True, who="alice", reason="go")
    await settle(sup)
    assert await live_jobs(sched) == ["local-2"]
    assert [(a, j) for a, j, _ in attempt_states(sup)] == [(1, "local-1"), (2, "local-2")]
    rec = sup.store.store.action(queued)
    assert rec is not None and rec.status == "skipped", rec
    assert "attempt 2 of run r1 was submitted after this restart was decided" in (rec.result or "")


async def test_a_retry_after_a_lease_gap_leaves_an_action_another_leader_finished(
    tmp_path: Path, sched: UnreachableController, closing: list[Supervisor]
) -> None:
    """While this daemon had no lease, a leader that took over reconciled the open restart
    and then stopped; this one renews the free lease. Its retry must not restart the run a
    second time, nor overwrite the other leader's result."""
    sup, d, action = await running_run(tmp_path, sched, closing)
    sched.cancel_failures = 1
    ok, _ = await sup.perform(d, action)
    assert not ok
    st = sup.store.store
    looks = 0

    def fence() -> str | None:
        nonlocal looks
        looks += 1
        if looks == 3:  # meanwhile the other leader's reconcile finished it
            st.update_action(action, status="succeeded", result="reconciled by b", finished_at=1.0)
        return "not carried out: the leader lease may have run out" if looks <= 5 else None

    sup.fence = fence
    await settle(sup)
    assert await live_jobs(sched) == ["local-1"]  # not restarted by this daemon
    rec = st.action(action)
    assert rec is not None and (rec.status, rec.result) == ("succeeded", "reconciled by b")
    assert sup.state.runs["r1"].restarts == 0
