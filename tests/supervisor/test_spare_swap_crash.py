"""Exactly once across crashes, for a restart inside the allocation (RunSpec.spares): a
daemon killed between the durable steps of a spare swap (control file written, the job's
relaunch acknowledged, the old attempt stopped, the new one stored, its event) is finished
by the next daemon with one new attempt, one relaunch of the step, no extra sbatch, and a
store that names the nodes and checkpoint the job really runs.

In-process, virtual time, a real SQLite store; a fake Slurm whose jobs run a fake batch
script (it follows the control file as examples/slurm/train.sbatch does, whenever time
passes). The scheduler and the script outlive the daemon, as slurmctld and the job do; the
crash is an exception no handler catches, raised from the durable write it interrupts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_decision_path import NODES, policy_file, settle

from trainwarden.health.clock import VirtualClock
from trainwarden.policies.engine import Mode, PolicyEngine
from trainwarden.policies.model import (
    ActionKind,
    ActionRequest,
    Actor,
    Decision,
    Event,
    EventKind,
    Verdict,
)
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.checkpoints.base import CheckpointInfo, Judged, Validation
from trainwarden.supervisor.checkpoints.registry import Scan
from trainwarden.supervisor.checkpoints.resume import ResumePlan, base_env
from trainwarden.supervisor.daemon import checkpoints, operations, spares, upkeep
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.reconcile import reconcile
from trainwarden.supervisor.daemon.supervisor import CoreConfig, Supervisor
from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.model.cluster import RunInfo, RunSpec
from trainwarden.supervisor.scheduler.base import JobInfo, JobSpec, JobState, NodeState, SchedNode
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store


class Killed(BaseException):
    """SIGKILL: nothing catches it, nothing after it runs."""


class ScriptClock(VirtualClock):
    """Virtual time; whenever it passes, the jobs' batch scripts take their turn."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks: list[Callable[[], None]] = []

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        for tick in self.ticks:
            tick()
        await super().sleep(0)


@dataclass
class Job:
    job_id: str
    spec: JobSpec
    alloc: tuple[str, ...]
    state: JobState = JobState.RUNNING
    script_alive: bool = True  # False: the batch script hangs (never relaunches or acks)
    generation: str | None = None
    launches: list[tuple[str, tuple[str, ...], dict[str, str]]] = field(default_factory=list)


class FakeSlurm:
    """Jobs that start at once on the first free nodes and run the spares batch loop."""

    name = "slurm"

    def __init__(self, clock: ScriptClock) -> None:
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.submitted: list[JobSpec] = []
        self.cancelled: list[str] = []
        self.down: set[str] = set()
        self.cancel_failures = 0  # the next cancels that fail (slurmctld not answering)
        clock.ticks.append(self.follow)

    async def nodes(self) -> list[SchedNode]:
        busy = {n for j in self.jobs.values() if not j.state.finished for n in j.alloc}
        return [
            SchedNode(
                n,
                NodeState.DOWN
                if n in self.down
                else NodeState.ALLOCATED
                if n in busy
                else NodeState.IDLE,
            )
            for n in NODES
        ]

    async def submit(self, spec: JobSpec) -> str:
        self.submitted.append(spec)
        busy = {n for j in self.jobs.values() if not j.state.finished for n in j.alloc}
        free = [n for n in NODES if n not in busy | self.down | set(spec.exclude)]
        job = Job(str(1000 + len(self.submitted)), spec, tuple(free[: spec.nodes + spec.spares]))
        self.jobs[job.job_id] = job
        self.follow()
        return job.job_id

    async def cancel(self, job_id: str) -> None:
        if self.cancel_failures:
            self.cancel_failures -= 1
            raise SchedulerError("scancel: Unable to contact slurm controller", retryable=True)
        self.cancelled.append(job_id)
        self.jobs[job_id].state = JobState.CANCELLED

    async def job(self, job_id: str) -> JobInfo | None:
        job = self.jobs.get(job_id)
        return None if job is None else JobInfo(job_id, job.state, job.alloc)

    async def drain(self, node: str, reason: str) -> None:
        return None

    async def resume(self, node: str) -> None:
        return None

    async def job_log(self, job_id: str) -> str | None:
        return None

    async def jobs_tagged(self) -> list[tuple[str, str]]:
        return [(j.job_id, j.spec.run) for j in self.jobs.values()]

    def follow(self) -> None:
        """train.sbatch's loop in every running job: (re)launch the step when the control
        file's generation changes, and acknowledge the launch."""
        for job in self.jobs.values():
            ctl = job.spec.env.get("TW_CONTROL_FILE")
            if ctl is None or job.state is not JobState.RUNNING or not job.script_alive:
                continue
            lines = Path(ctl).read_text().splitlines()
            kv = dict(line.split("=", 1) for line in lines if "=" in line)
            if kv["generation"] == job.generation:
                continue
            job.generation = kv["generation"]
            want = int(job.spec.env["TW_TRAIN_NODES"])
            nodes = tuple(kv["nodes"].split(",")) if kv["nodes"] else job.alloc[:want]
            env = {k: v for k, v in kv.items() if k not in ("generation", "nodes")}
            job.launches.append((job.generation, nodes, env))
            with spares.ack_path(Path(ctl)).open("a") as f:
                f.write(
                    f"generation={job.generation} launched={self.clock.now():.3f} "
                    f"nodes={','.join(nodes)}\n"
                )


SPEC = RunSpec(command=("train.sbatch",), nodes=3, checkpoint_dir="", spares=1)


@dataclass
class World:
    """What outlives a daemon: the clock, Slurm and its jobs, the store's file, the disk."""

    tmp_path: Path
    clock: ScriptClock
    slurm: FakeSlurm
    newest_step: int = 30  # the newest valid checkpoint the run has saved
    daemons: list[Supervisor] = field(default_factory=list)

    async def daemon(self) -> Supervisor:
        url = f"sqlite:///{self.tmp_path / 'tw.db'}"
        upgrade(url)
        sup = Supervisor(
            CoreConfig(retry_delays_s=(1.0, 1.0)),
            self.clock,
            AsyncStore(open_store(url)),
            self.slurm,
            PolicyEngine(load_policy(policy_file(self.tmp_path)), Mode.ENFORCE),
            Metrics(),
        )
        self.daemons.append(sup)
        await upkeep.sync_scheduler(sup)
        return sup

    async def next_daemon(self) -> Supervisor:
        """The daemon systemd starts after the crash: load, reconcile, settle."""
        self.clock.advance(5.0)
        sup = await self.daemon()
        await operations.load(sup)
        await reconcile(sup)
        await settle(sup)
        return sup

    def plan(self, root: str, fmt: str = "auto", *, now: float) -> ResumePlan:
        """checkpoints.plan_resume, without torch: the newest checkpoint is step N."""
        info = CheckpointInfo(self.newest_step, f"{root}/step-{self.newest_step}", now)
        scan = Scan(root, "dcp", "test", (Judged(info, Validation(True, "ok")),))
        return ResumePlan(scan, base_env(info, "dcp"))


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    clock = ScriptClock()
    w = World(tmp_path, clock, FakeSlurm(clock))
    monkeypatch.setattr(checkpoints, "plan_resume", w.plan)
    yield w
    for sup in w.daemons:
        sup.store.close()


async def started(world: World) -> tuple[Supervisor, Decision, int]:
    """A daemon whose run r1 runs attempt 1 in job 1001 (n1-n3 training, n4 the spare) and
    that has recorded a restart without n3 (dead); what happens next is up to the test."""
    sup = await world.daemon()
    spec = RunSpec.from_dict({**SPEC.to_dict(), "checkpoint_dir": str(world.tmp_path / "ck")})
    await operations.add_run(sup, "r1", "slurm", spec, "test")
    run = sup.state.runs["r1"]
    assert (run.job_id, run.nodes) == ("1001", ("n1", "n2", "n3"))
    await sup.runs.poll(run)  # RUNNING
    world.slurm.down.add("n3")
    world.clock.advance(30.0)
    req = ActionRequest(
        ActionKind.RESTART_RUN, Actor.RULE, "NodeDead set on n3", run="r1", exclude=("n3",)
    )
    d = Decision(req, Verdict.ALLOW, ())
    action = sup.store.store.record_action(d, ts=sup.clock.now())
    world.clock.advance(1.0)
    return sup, d, action


def crash_on_save(sup: Supervisor, state: str, *, after: bool = False) -> None:
    """The daemon dies at the attempt write whose state is ``state``: before it (or, with
    ``after``, right after it reached the store)."""
    save = sup.runs.save_attempt

    async def dying(run: RunInfo, fields: dict[str, Any]) -> None:
        if fields.get("state") == state and not after:
            raise Killed(state)
        await save(run, fields)
        if fields.get("state") == state:
            raise Killed(state)

    sup.runs.save_attempt = dying


def crash_on_control(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon dies right after it wrote a swap's control file (before any ack)."""
    write = spares.write_control

    def dying(control: Path, generation: int, nodes: Any, env: Any) -> None:
        write(control, generation, nodes, env)
        if nodes:
            monkeypatch.setattr(spares, "write_control", write)
            raise Killed("control written")

    monkeypatch.setattr(spares, "write_control", dying)


def swap_started(sup: Supervisor) -> list[Event]:
    return [
        e
        for e in sup.store.store.events(run="r1", limit=200)
        if e.kind is EventKind.RUN_STARTED and e.data.get("attempt") == 2
    ]


async def assert_swapped_once(world: World, sup: Supervisor, action: int) -> None:
    """One relaunch inside job 1001 on n1, n2, n4, from the checkpoint the step got,
    recorded once as attempt 2; a third daemon finds nothing to do."""
    job = world.slurm.jobs["1001"]
    assert [g for g, _, _ in job.launches] == ["1", "2"]  # one relaunch, never a second
    assert len(world.slurm.submitted) == 1 and world.slurm.cancelled == []
    _, nodes, env = job.launches[-1]
    assert nodes == ("n1", "n2", "n4")
    st = sup.store.store
    first, second = st.attempts("r1")
    assert (first.attempt, first.state) == (1, "stopped")
    assert (second.attempt, second.job_id, second.state) == (2, "1001", "running")
    assert second.nodes == nodes
    assert second.resumed_from_step == int(env["TRAINWARDEN_RESUME_STEP"]) == 30
    assert second.resumed_from == env["TRAINWARDEN_RESUME_FROM"]
    row = st.run("r1")
    assert row is not None and (row.current_attempt, row.restarts, row.state) == (
        2,
        1,
        "running",
    )
    run = sup.state.runs["r1"]
    assert (run.attempt, run.job_id, run.nodes, run.restarts) == (2, "1001", nodes, 1)
    [event] = swap_started(sup)
    assert event.data["in_allocation"] is True and event.data["job_id"] == "1001"
    assert tuple(event.data["nodes"]) == nodes
    if "recovery" in event.data:  # announced by the swap itself, not after the crash
        assert "(spare n4 in for n3)" in event.message, event.message
    rec = st.action(action)
    assert rec is not None and rec.status == "succeeded", rec
    third = await world.next_daemon()
    assert await reconcile(third) == 0
    assert [g for g, _, _ in job.launches] == ["1", "2"] and len(world.slurm.submitted) == 1
    assert len(third.store.store.attempts("r1")) == 2 and len(swap_started(third)) == 1


async def test_killed_after_the_control_file_before_the_relaunch(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job relaunches while no daemon runs (and saves a newer checkpoint); the next
    daemon adopts that launch instead of writing the control file again."""
    sup, d, action = await started(world)
    for job in world.slurm.jobs.values():
        job.script_alive = False  # the script's turn comes after the crash
    crash_on_control(monkeypatch)
    with pytest.raises(Killed):
        await sup.perform(d, action)
    world.slurm.jobs["1001"].script_alive = True
    world.slurm.follow()
    world.newest_step = 40  # the relaunched step saved again before the next daemon came
    again = await world.next_daemon()
    await assert_swapped_once(world, again, action)


async def test_killed_after_the_control_file_and_the_job_never_relaunches(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch script hangs: the next daemon waits swap_timeout_s for the launch it asked
    for, then resubmits once with --exclude."""
    sup, d, action = await started(world)
    world.slurm.jobs["1001"].script_alive = False
    crash_on_control(monkeypatch)
    with pytest.raises(Killed):
        await sup.perform(d, action)
    again = await world.next_daemon()
    assert world.slurm.cancelled == ["1001"]
    assert [s.attempt for s in world.slurm.submitted] == [1, 2]
    assert "n3" in world.slurm.submitted[1].exclude
    assert [g for g, _, _ in world.slurm.jobs["1001"].launches] == ["1"]  # never relaunched
    st = again.store.store
    assert [(a.attempt, a.job_id) for a in st.attempts("r1")] == [(1, "1001"), (2, "1002")]
    [event] = swap_started(again)
    assert not event.data.get("in_allocation") and event.data["job_id"] == "1002"
    rec = st.action(action)
    assert rec is not None and rec.status == "succeeded", rec
    third = await world.next_daemon()
    assert await reconcile(third) == 0 and len(world.slurm.submitted) == 2


@pytest.mark.parametrize(
    ("state", "after"),
    [
        ("stopped", False),  # relaunch acknowledged, nothing stored
        ("submitted", False),  # attempt 1 stored as stopped, attempt 2 not stored
        ("running", False),  # attempt 2 stored as submitted, not yet as running
        ("running", True),  # attempt 2 stored as running, no run-started event
    ],
)
async def test_killed_after_the_relaunch(world: World, state: str, after: bool) -> None:
    sup, d, action = await started(world)
    crash_on_save(sup, state, after=after)
    with pytest.raises(Killed):
        await sup.perform(d, action)
    world.newest_step = 40
    again = await world.next_daemon()
    await assert_swapped_once(world, again, action)


@pytest.mark.parametrize("end", [JobState.FAILED, JobState.COMPLETED])
async def test_killed_after_the_relaunch_and_the_job_ended_meanwhile(
    world: World, end: JobState
) -> None:
    """The job relaunched, then ended before the next daemon came (its batch host lost, or
    the run done): the launch is still adopted as attempt 2, and the next poll records its
    end: a failure is resubmitted once (attempt 3, n3 excluded), a completion completes."""
    sup, d, action = await started(world)
    crash_on_save(sup, "stopped")
    with pytest.raises(Killed):
        await sup.perform(d, action)
    world.slurm.jobs["1001"].state = end
    again = await world.next_daemon()
    st = again.store.store
    assert [(a.attempt, a.job_id) for a in st.attempts("r1")] == [(1, "1001"), (2, "1001")]
    assert len(world.slurm.submitted) == 1 and len(swap_started(again)) == 1
    world.clock.advance(600.0)  # past every restart backoff
    await again.tick()
    await settle(again)
    await again.tick()
    await settle(again)
    run = again.state.runs["r1"]
    if end is JobState.COMPLETED:
        assert len(world.slurm.submitted) == 1 and run.phase.value == "completed"
        return
    assert len(world.slurm.submitted) == 2, world.slurm.submitted
    assert "n3" in world.slurm.submitted[1].exclude
    assert (run.attempt, run.job_id) == (3, "1002")
    assert [(a.attempt, a.job_id) for a in st.attempts("r1")][-1] == (3, "1002")


async def test_killed_after_the_control_file_and_the_job_died_before_relaunching(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No launch, and no job left to launch it: the swap is abandoned at once, the run
    resubmitted once as attempt 2."""
    sup, d, action = await started(world)
    world.slurm.jobs["1001"].script_alive = False
    crash_on_control(monkeypatch)
    with pytest.raises(Killed):
        await sup.perform(d, action)
    world.slurm.jobs["1001"].state = JobState.FAILED
    t0 = world.clock.monotonic()
    again = await world.next_daemon()
    assert world.clock.monotonic() - t0 < 10.0  # not the swap's 20 s: nothing to wait for
    assert [s.attempt for s in world.slurm.submitted] == [1, 2]
    assert "n3" in world.slurm.submitted[1].exclude
    st = again.store.store
    assert [(a.attempt, a.job_id) for a in st.attempts("r1")] == [(1, "1001"), (2, "1002")]
    third = await world.next_daemon()
    assert await reconcile(third) == 0 and len(world.slurm.submitted) == 2


async def test_a_swap_that_timed_out_and_whose_cancel_failed_submits_nothing(
    world: World,
) -> None:
    """The job never acknowledged and the fall-back's scancel failed: job 1001 may still
    run, so no attempt is submitted beside it; attempt 1 stays running, the action fails
    naming the job and scancel's error. Once slurmctld answers, the restart's retry stops
    job 1001 first, then submits once."""
    sup, d, action = await started(world)
    world.slurm.jobs["1001"].script_alive = False
    world.slurm.cancel_failures = 1
    ok, result = await sup.perform(d, action)
    assert not ok and "job 1001" in result and "Unable to contact slurm controller" in result
    assert [s.attempt for s in world.slurm.submitted] == [1] and world.slurm.cancelled == []
    st = sup.store.store
    assert [(a.attempt, a.job_id, a.state) for a in st.attempts("r1")] == [(1, "1001", "running")]
    run = sup.state.runs["r1"]
    assert (run.attempt, run.restarts, run.phase.value) == (1, 0, "running")
    assert "retrying" in result
    await settle(sup)  # the retry, once slurmctld answers (virtual time)
    rec = st.action(action)
    assert rec is not None and rec.status == "succeeded" and "retry 1: " in (rec.result or "")
    assert world.slurm.cancelled == ["1001"] and [s.attempt for s in world.slurm.submitted] == [
        1,
        2,
    ]
    live = [j.job_id for j in world.slurm.jobs.values() if not j.state.finished]
    assert live == ["1002"] and "n3" in world.slurm.submitted[1].exclude
    assert [(a.attempt, a.job_id, a.state) for a in st.attempts("r1")] == [
        (1, "1001", "stopped"),
        (2, "1002", "submitted"),
    ]


async def test_killed_after_a_swap_timed_out_and_its_cancel_failed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, and the daemon died at its next durable step (the resubmission, or the
    action's result): the next one gives the swap its time, then stops job 1001 before it
    submits: never two jobs of the run at once."""
    sup, d, action = await started(world)
    world.slurm.jobs["1001"].script_alive = False
    world.slurm.cancel_failures = 1
    plans = 0

    def plan_then_die(root: str, fmt: str = "auto", *, now: float) -> ResumePlan:
        nonlocal plans
        plans += 1
        if plans == 2:  # the resubmission's choice of checkpoint
            raise Killed("before the resubmission")
        return world.plan(root, fmt, now=now)

    async def dying_finish(*args: Any) -> None:
        raise Killed("before the action's result")

    monkeypatch.setattr(checkpoints, "plan_resume", plan_then_die)
    sup.executor.finish = dying_finish  # type: ignore[method-assign]
    sup.executor._failed_once = dying_finish  # type: ignore[method-assign]  # a retry's note
    with pytest.raises(Killed):
        await sup.perform(d, action)
    assert sup.store.store.attempts("r1")[-1].state != "stopped"  # job 1001 may still run
    assert world.slurm.jobs["1001"].state is JobState.RUNNING
    monkeypatch.setattr(checkpoints, "plan_resume", world.plan)
    again = await world.next_daemon()
    assert world.slurm.cancelled == ["1001"]
    assert world.slurm.jobs["1001"].state is JobState.CANCELLED
    assert [s.attempt for s in world.slurm.submitted] == [1, 2]
    live = [j.job_id for j in world.slurm.jobs.values() if not j.state.finished]
    assert live == ["1002"]
    st = again.store.store
    assert [(a.attempt, a.job_id) for a in st.attempts("r1")] == [(1, "1001"), (2, "1002")]
    rec = st.action(action)
    assert rec is not None and rec.status == "succeeded", rec


async def test_an_attempt_stored_stopped_while_its_job_runs_is_cancelled_before_resubmitting(
    world: World,
) -> None:
    """What a daemon before this fix could leave: its swap timed out, its scancel failed,
    it stored attempt 1 stopped anyway and died before the resubmission. The next daemon
    gives the swap its time, then stops job 1001 itself before it submits."""
    sup, _, action = await started(world)
    world.slurm.jobs["1001"].script_alive = False
    control = spares.control_path(str(world.tmp_path / "ck"))
    spares.write_control(control, 2, ("n1", "n2", "n4"), {"TRAINWARDEN_ATTEMPT": "2"})
    st = sup.store.store
    st.update_attempt("r1", 1, state="stopped", ended_at=sup.clock.now(), end_reason="stopped")
    again = await world.next_daemon()
    assert world.slurm.cancelled == ["1001"]
    assert [s.attempt for s in world.slurm.submitted] == [1, 2]
    live = [j.job_id for j in world.slurm.jobs.values() if not j.state.finished]
    assert live == ["1002"]
    assert [(a.attempt, a.job_id) for a in again.store.store.attempts("r1")] == [
        (1, "1001"),
        (2, "1002"),
    ]
    rec = again.store.store.action(action)
    assert rec is not None and rec.status == "succeeded", rec


def test_the_control_file_read_back_as_the_script_reads_it(tmp_path: Path) -> None:
    control = spares.control_path(str(tmp_path))
    assert spares.read_control(control) is None  # no file: no swap in flight
    spares.write_control(control, 3, ("n1", "n4"), {"TRAINWARDEN_RESUME_STEP": "30"})
    assert spares.read_control(control) == spares.Control(
        3, ("n1", "n4"), {"TRAINWARDEN_RESUME_STEP": "30"}
    )
    spares.write_control(control, 1, (), {})
    assert spares.read_control(control) == spares.Control(1, (), {})
    control.write_text("nodes=n1\ngeneration=x\n")
    assert spares.read_control(control) is None
