"""Exactly once across crashes: a daemon that died in the middle of a restart, or before it
recorded its decision, is finished by the next one with exactly one new attempt and never
two attempts of one run at once.

In-process, virtual time, a real SQLite store and the local scheduler running real (idle)
processes; the scheduler object outlives the daemon, as slurmctld does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_decision_path import NODES, closing, make, policy_file, settle, xid

from trainwarden.policies.model import (
    ActionKind,
    ActionRequest,
    Actor,
    Decision,
    Event,
    EventKind,
    Verdict,
)
from trainwarden.supervisor.api.service import DaemonService
from trainwarden.supervisor.daemon import operations
from trainwarden.supervisor.daemon.reconcile import reconcile
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.errors import NotFoundError
from trainwarden.supervisor.model.cluster import RunSpec
from trainwarden.supervisor.scheduler.base import JobSpec, JobState, NodeState
from trainwarden.supervisor.scheduler.local import LocalScheduler

__all__ = ["closing"]  # the fixture, shared with test_decision_path
SPEC = RunSpec(command=("sleep", "120"), nodes=2, checkpoint_dir="/nonexistent/ck")


@pytest.fixture
async def sched(tmp_path: Path) -> AsyncIterator[LocalScheduler]:
    s = LocalScheduler(NODES[:4], tmp_path / "logs", stop_grace_s=5.0)
    yield s
    for job_id, _ in await s.jobs_tagged():
        await s.cancel(job_id)


async def first_daemon(tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor]) -> int:
    """A daemon that registered run r1 (attempt 1 on n1, n2) and recorded a restart of it
    excluding n1; returns the restart's action id. What it did next is up to the test."""
    sup = await make(tmp_path, policy_file(tmp_path), scheduler=sched)
    closing.append(sup)
    await operations.add_run(sup, "r1", "local", SPEC, "test")
    req = ActionRequest(
        ActionKind.RESTART_RUN, Actor.RULE, "GpuFatal set on n1", run="r1", exclude=("n1",)
    )
    action = sup.store.store.record_action(Decision(req, Verdict.ALLOW, ()), ts=sup.clock.now())
    sup.clock.advance(1.0)  # type: ignore[attr-defined]  # virtual time: a restart takes some
    return action


async def next_daemon(
    tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor]
) -> Supervisor:
    sup = await make(tmp_path, policy_file(tmp_path), scheduler=sched)
    sup.clock.set(closing[-1].clock.now() + 5.0)  # type: ignore[attr-defined]
    closing.append(sup)
    await operations.load(sup)
    await reconcile(sup)
    await settle(sup)
    return sup


async def live_jobs(sched: LocalScheduler) -> list[str]:
    out = []
    for job_id, _ in await sched.jobs_tagged():
        info = await sched.job(job_id)
        if info is not None and not info.state.finished:
            out.append(job_id)
    return out


def alive(sched: LocalScheduler, job_id: str) -> bool:
    return any(psutil.pid_exists(p) for p in sched.pids(job_id).values())


async def test_a_restart_that_never_reached_the_scheduler_is_submitted_once(
    tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor]
) -> None:
    restart = await first_daemon(tmp_path, sched, closing)
    again = await next_daemon(tmp_path, sched, closing)
    assert await live_jobs(sched) == ["local-2"]  # attempt 1 stopped, one new attempt
    assert [a.attempt for a in again.store.store.attempts("r1")] == [1, 2]
    rec = again.store.store.action(restart)
    assert rec is not None and rec.status == "succeeded"
    assert "never submitted" in (rec.result or "")
    info = await sched.job("local-2")
    assert info is not None and "n1" not in info.nodes
    assert again.metrics.run_restarts_total.labels(run="r1")._value.get() == 1
    assert await reconcile(again) == 0 and await live_jobs(sched) == ["local-2"]


async def test_a_restart_submitted_but_not_recorded_is_adopted_not_repeated(
    tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor]
) -> None:
    restart = await first_daemon(tmp_path, sched, closing)
    # what the dead daemon did before it could record it: stop attempt 1, submit attempt 2
    await sched.cancel("local-1")
    await sched.submit(JobSpec("r1", 2, 2, SPEC.command, exclude=("n1",)))
    again = await next_daemon(tmp_path, sched, closing)
    assert await live_jobs(sched) == ["local-2"]  # adopted: nothing was submitted again
    assert {j for j, _ in await sched.jobs_tagged()} == {"local-1", "local-2"}
    [_, second] = again.store.store.attempts("r1")
    assert (second.attempt, second.job_id) == (2, "local-2")
    run = again.state.runs["r1"]
    assert (run.attempt, run.job_id, run.restarts) == (2, "local-2", 1)
    rec = again.store.store.action(restart)
    assert rec is not None and rec.status == "succeeded" and "adopted" in (rec.result or "")


class _Died(BaseException):
    """The daemon's death at that line (nothing after it runs, nothing catches it)."""


async def test_a_restart_whose_launch_the_crash_cut_short_is_submitted_once_more(
    tmp_path: Path,
    sched: LocalScheduler,
    closing: list[Supervisor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon died between the ranks of attempt 2's launch: rank 0 waits for a rank 1
    that never comes. The next daemon (its scheduler read from the state file) must not
    adopt that job as the attempt, or the run never steps again."""
    restart = await first_daemon(tmp_path, sched, closing)
    await sched.cancel("local-1")
    spawn = LocalScheduler._spawn

    async def die_at_rank_1(
        self: LocalScheduler, job: Any, rank: int, node: str, port: int
    ) -> None:
        if rank == 1:
            raise _Died
        await spawn(self, job, rank, node, port)

    monkeypatch.setattr(LocalScheduler, "_spawn", die_at_rank_1)
    with pytest.raises(_Died):
        await sched.submit(JobSpec("r1", 2, 2, SPEC.command, exclude=("n1",)))
    monkeypatch.setattr(LocalScheduler, "_spawn", spawn)
    [rank_0] = sched.pids("local-2").values()

    reread = LocalScheduler(NODES[:4], tmp_path / "logs", stop_grace_s=5.0)
    try:
        cut = await reread.job("local-2")
        assert cut is not None and cut.state is JobState.FAILED
        assert "cut short by a daemon crash" in cut.reason
        again = await next_daemon(tmp_path, reread, closing)
        assert await live_jobs(reread) == ["local-3"]
        assert not psutil.pid_exists(rank_0) or psutil.Process(rank_0).status() == "zombie"
        [_, second] = again.store.store.attempts("r1")
        assert (second.attempt, second.job_id) == (2, "local-3")
        rec = again.store.store.action(restart)
        assert rec is not None and rec.status == "succeeded"
        assert "never submitted" in (rec.result or "")
    finally:
        for job_id in await live_jobs(reread):
            await reread.cancel(job_id)


async def test_a_restart_done_but_not_marked_done_is_only_marked(
    tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor]
) -> None:
    restart = await first_daemon(tmp_path, sched, closing)
    sup = closing[0]
    result = await sup.runs.restart(sup.state.runs["r1"], {"n1"}, "GpuFatal set on n1")
    assert result.ok  # and then the daemon died before recording the action's result
    again = await next_daemon(tmp_path, sched, closing)
    assert await live_jobs(sched) == ["local-2"]
    assert [a.attempt for a in again.store.store.attempts("r1")] == [1, 2]
    rec = again.store.store.action(restart)
    assert rec is not None and rec.status == "succeeded"
    assert "submitted by this restart" in (rec.result or "")


async def test_a_second_job_of_a_running_run_is_stopped(
    tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor]
) -> None:
    sup = await make(tmp_path, policy_file(tmp_path), scheduler=sched)
    closing.append(sup)
    await operations.add_run(sup, "r1", "local", SPEC, "test")
    stray = await sched.submit(JobSpec("r1", 2, 1, SPEC.command))
    again = await next_daemon(tmp_path, sched, closing)
    assert await live_jobs(sched) == ["local-1"]  # the known attempt goes on alone
    info = await sched.job(stray)
    assert info is not None and info.state is JobState.CANCELLED and not alive(sched, stray)
    assert again.state.runs["r1"].attempt == 1
    assert any("never two attempts" in e.message for e in again.store.store.events(run="r1"))


async def test_a_decision_the_crash_kept_from_being_recorded_is_made_on_start(
    tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor]
) -> None:
    """The XID's event and condition were stored, the daemon died before its decisions
    were: the next daemon drains the node and restarts its run, once."""
    sup = await make(tmp_path, policy_file(tmp_path), scheduler=sched)
    closing.append(sup)
    await operations.add_run(sup, "r1", "local", SPEC, "test")
    sup.execute = lambda decisions: None  # type: ignore[method-assign]  # died here
    await xid(sup, "n1", 79)
    await sup.store.flush()
    assert sup.store.store.actions() == []
    again = await next_daemon(tmp_path, sched, closing)
    kinds = sorted(a.kind.value for a in again.store.store.actions() if a.status == "succeeded")
    assert kinds == ["drain", "restart-run"]
    states = {n.name: n.state for n in await sched.nodes()}
    assert states["n1"] in (NodeState.DRAINED, NodeState.DRAINING)
    assert await live_jobs(sched) == ["local-2"]
    # a third daemon finds nothing left to do
    third = await next_daemon(tmp_path, sched, closing)
    assert len(third.store.store.actions()) == 2 and await live_jobs(sched) == ["local-2"]


async def test_a_restart_whose_lease_ran_out_touches_no_job(
    tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor]
) -> None:
    """Fencing inside the restart: the lease may run out while a restart waits for its
    run's lock or for the old attempt to stop; it then neither cancels nor submits."""
    sup = await make(tmp_path, policy_file(tmp_path), scheduler=sched)
    closing.append(sup)
    await operations.add_run(sup, "r1", "local", SPEC, "test")
    req = ActionRequest(ActionKind.RESTART_RUN, Actor.RULE, "GpuFatal set on n1", run="r1")
    d = Decision(req, Verdict.ALLOW, ())
    action = sup.store.store.record_action(d, ts=sup.clock.now())
    leased = iter([None])  # the executor's check passes; the restart's own does not
    sup.fence = lambda: next(leased, "not carried out: the leader lease may have run out")
    ok, result = await sup.perform(d, action)
    assert not ok and "lease may have run out" in result
    assert await live_jobs(sched) == ["local-1"] and alive(sched, "local-1")
    assert sup.state.runs["r1"].attempt == 1


async def fail_attempt(sup: Supervisor) -> None:
    """The run's current attempt dies at step 50 with no node to blame."""
    run = sup.state.runs["r1"]
    run.last_step = 50
    sup.clock.advance(600.0)  # type: ignore[attr-defined]  # past every restart backoff
    now = sup.clock.now()
    data = {"state": "failed", "attempt": run.attempt, "last_step": 50, "failed": True}
    await sup.decide_on_event(
        Event(now, EventKind.ATTEMPT_ENDED, run="r1", message="failed at step 50", data=data)
    )
    await settle(sup)


def restart_verdicts(sup: Supervisor) -> list[str]:
    return [
        a.verdict.value
        for a in reversed(sup.store.store.actions())
        if a.kind is ActionKind.RESTART_RUN
    ]


@pytest.mark.parametrize("restart_daemon", [False, True])
async def test_the_crash_loop_guard_counts_failures_from_before_a_daemon_restart(
    tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor], restart_daemon: bool
) -> None:
    """Three failures at one step are a crash loop, whether or not the daemon restarted
    after the second (the baseline is the same run without the restart)."""
    sup = await make(tmp_path, policy_file(tmp_path), scheduler=sched)
    closing.append(sup)
    await operations.add_run(sup, "r1", "local", SPEC, "test")
    await fail_attempt(sup)
    await fail_attempt(sup)
    if restart_daemon:
        sup = await next_daemon(tmp_path, sched, closing)
    await fail_attempt(sup)
    assert restart_verdicts(sup) == ["allow", "allow", "block"]
    [last] = [a for a in sup.store.store.actions() if a.kind is ActionKind.RESTART_RUN][:1]
    assert any("step 50" in g.detail for g in last.guards if not g.passed)


async def test_a_crash_loop_incident_still_stops_restarts_after_a_daemon_restart(
    tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor]
) -> None:
    sup = await make(tmp_path, policy_file(tmp_path), scheduler=sched)
    closing.append(sup)
    await operations.add_run(sup, "r1", "local", SPEC, "test")
    for _ in range(3):
        await fail_attempt(sup)
    await sup.tick()  # the incident reaches the store
    [row] = sup.store.store.incidents(open_only=True)
    assert (row.kind, row.cause) == ("crash-loop", "r1")
    again = await next_daemon(tmp_path, sched, closing)
    await fail_attempt(again)
    await again.tick()
    last = next(a for a in again.store.store.actions() if a.kind is ActionKind.RESTART_RUN)
    assert last.verdict is Verdict.BLOCK
    assert any(f"stopped by incident {row.detail['id']}" in g.detail for g in last.guards)
    assert [r.id for r in again.store.store.incidents(open_only=True)] == [row.id]


async def test_an_attempt_stored_before_its_runs_row_is_taken_as_the_current_one(
    tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor]
) -> None:
    """The daemon died between storing attempt 2 and updating the run's row (two writes):
    the next one takes the attempt as the truth, submits nothing, and the run runs."""
    restart = await first_daemon(tmp_path, sched, closing)
    sup = closing[0]
    assert (await sup.runs.restart(sup.state.runs["r1"], {"n1"}, "GpuFatal set on n1")).ok
    sup.store.store.update_run("r1", state="restarting", current_attempt=1, restarts=0)
    again = await next_daemon(tmp_path, sched, closing)
    run = again.state.runs["r1"]
    assert (run.attempt, run.job_id, run.phase.value, run.restarts) == (
        2,
        "local-2",
        "running",
        1,
    )
    assert await live_jobs(sched) == ["local-2"]
    row = again.store.store.run("r1")
    assert row is not None and (row.current_attempt, row.state) == (2, "running")
    rec = again.store.store.action(restart)
    assert rec is not None and rec.status == "succeeded"


async def test_an_operator_closes_the_crash_loop_incident_and_restarts_resume(
    tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor]
) -> None:
    sup = await make(tmp_path, policy_file(tmp_path), scheduler=sched)
    closing.append(sup)
    await operations.add_run(sup, "r1", "local", SPEC, "test")
    for _ in range(3):
        await fail_attempt(sup)
    service = DaemonService(sup)
    [inc] = await service.list_incidents(open_only=True)
    assert inc.kind == "crash-loop"
    with pytest.raises(NotFoundError):
        await service.close_incident("INC-999", "no such", "alice")
    closed = await service.close_incident(inc.id, "fixed the data loader", "alice")
    assert not closed.open and await service.list_incidents(open_only=True) == []
    await sup.tick()  # the close reaches the store
    assert sup.store.store.incidents(open_only=True) == []
    assert any("closed by alice" in e.message for e in sup.store.store.events(limit=20))
    await fail_attempt(sup)  # the failure memory went with the incident: restarted again
    last = next(a for a in sup.store.store.actions() if a.kind is ActionKind.RESTART_RUN)
    assert last.verdict is Verdict.ALLOW


async def test_a_drain_left_open_for_its_retry_is_superseded_by_a_later_undrain(
    tmp_path: Path, sched: LocalScheduler, closing: list[Supervisor]
) -> None:
    """The drain of n3 waited for its retry (slurmctld away) when an operator undrained n3
    (a false alarm); then the daemon died. The next one must not drain n3 again."""
    sup = await make(tmp_path, policy_file(tmp_path), scheduler=sched)
    closing.append(sup)
    st = sup.store.store
    req = ActionRequest(ActionKind.DRAIN, Actor.RULE, "GpuFatal set on n3", node="n3")
    drain = st.record_action(Decision(req, Verdict.ALLOW, ()), ts=sup.clock.now())
    st.update_action(drain, status="running", result="local refused: away (retrying up to 2 times)")
    sup.clock.advance(10.0)  # type: ignore[attr-defined]
    back = ActionRequest(ActionKind.UNDRAIN, Actor.OPERATOR, "false alarm", node="n3", who="al")
    undrain = st.record_action(Decision(back, Verdict.ALLOW, ()), ts=sup.clock.now())
    st.update_action(undrain, status="succeeded", result="n3 resumed", finished_at=sup.clock.now())
    again = await next_daemon(tmp_path, sched, closing)
    assert {n.name: n.state for n in await sched.nodes()}["n3"] is not NodeState.DRAINED
    rec = again.store.store.action(drain)
    assert rec is not None and rec.status == "skipped"
    assert f"superseded by action #{undrain} on n3" in (rec.result or "")
