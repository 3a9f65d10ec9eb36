"""Restarts inside the allocation (``RunSpec.spares``): the training step relaunched on a
spare node of the job that runs, in place of a bad one, with no new sbatch and so no queue.

The daemon's side of it. The protocol with the batch script (the control file, its
acknowledgements) is ``spares``; the attempts' lifecycle, the store and the resubmission are
the owning ``RunManager``'s. A swap is the next attempt when the job acknowledges it; one a
crashed daemon wrote and did not record is finished by the next daemon from the control file,
never written again (``InAllocationRestarts._finish_swap``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from trainwarden.health.clock import Clock
from trainwarden.supervisor.daemon import checkpoints, spares
from trainwarden.supervisor.detectors.node_faults import Observation
from trainwarden.supervisor.detectors.progress import ProgressTracker
from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.model.cluster import ClusterState, RunInfo
from trainwarden.supervisor.model.lifecycle import AttemptPhase, NodePhase, RunPhase
from trainwarden.supervisor.scheduler.base import JobInfo, JobSpec, JobState, Scheduler

log = logging.getLogger(__name__)


class RunOwner(Protocol):
    """What an in-allocation restart uses of the RunManager that owns it: read when used,
    so a sink replaced on the owner (a test's crash) is the one called."""

    state: ClusterState
    scheduler: Scheduler
    clock: Clock
    progress: ProgressTracker
    save_attempt: Callable[[RunInfo, dict[str, Any]], Awaitable[None]]
    fence: Callable[[], str | None]

    def unusable(self, run: RunInfo) -> set[str]: ...

    async def plan_resume(self, run: RunInfo) -> checkpoints.ResumePlan: ...

    async def record_started(
        self,
        run: RunInfo,
        what: str,
        job_id: str,
        excluded: list[str],
        resume: str | None,
        *,
        cleared: list[Observation],
        started_at: float | None = None,
        extra: dict[str, Any],
    ) -> None: ...


@dataclass(frozen=True)
class Relaunched:
    """The step relaunched inside job ``job_id`` as the run's next attempt (stored, announced)."""

    what: str
    job_id: str
    resumed_from_step: int | None


class InAllocationRestarts:
    """Swaps a spare in for a bad node inside the running job, for runs that hold spares."""

    def __init__(self, runs: RunOwner, timeout_s: float) -> None:
        self.runs = runs
        # how long a swap waits for the job to relaunch before the owner resubmits
        self.timeout_s = timeout_s
        self._spares_left = 0  # healthy spare nodes left in the job at the last swap

    def uses_spares(self, run: RunInfo) -> bool:
        """Whether ``run`` restarts inside its job: it holds spares, and its batch script
        follows the control file (examples/slurm/train.sbatch, Slurm only)."""
        return run.spec.spares > 0 and self.runs.scheduler.name == "slurm"

    def training_nodes(self, run: RunInfo, nodes: Sequence[str]) -> tuple[str, ...]:
        """The nodes the training step runs on: with spares, the first N of the allocation
        (what the batch script starts on); the rest wait as spares and are not watched."""
        if not self.uses_spares(run):
            return tuple(nodes)
        return tuple(nodes[: run.spec.nodes])

    async def with_control(self, run: RunInfo, spec: JobSpec) -> JobSpec:
        """Hold the spares too, and give the job the control file its script follows."""
        control = spares.control_path(run.spec.checkpoint_dir)
        await asyncio.to_thread(spares.write_control, control, spec.attempt, (), _control_env(spec))
        env = {
            **spec.env,
            "TW_CONTROL_FILE": str(control),
            "TW_TRAIN_NODES": str(spec.nodes),
        }
        return replace(spec, spares=run.spec.spares, env=env)

    async def swap_in(self, run: RunInfo, exclude: set[str], reason: str) -> Relaunched | None:
        """Relaunch the training step inside the running job on N healthy nodes, a spare in
        place of the bad one: no new sbatch, so no queue wait. None when it cannot (no job
        running, the batch host is bad, spares used up, the job did not relaunch in time):
        the owner then resubmits as without spares. A swap a crashed daemon left unrecorded
        is finished first (see _finish_swap)."""
        if run.job_id is None:
            return None
        control = spares.control_path(run.spec.checkpoint_dir)
        written = await asyncio.to_thread(spares.read_control, control)
        if written is not None and written.generation == run.attempt + 1 and written.nodes:
            finished = await self._finish_swap(run, exclude, reason, control, written)
            if finished is None or not set(run.nodes) & (self.runs.unusable(run) | exclude):
                return finished
            # the job relaunched on a node this restart must leave: swap again from there
        if run.attempt_phase not in (AttemptPhase.SUBMITTED, AttemptPhase.RUNNING):
            return None
        t_begin = self.runs.clock.now()
        job_id = run.job_id
        try:
            info = await self.runs.scheduler.job(job_id)
        except SchedulerError as exc:
            log.warning("run %s: no in-allocation restart: %s", run.name, exc)
            return None
        if info is None or info.state is not JobState.RUNNING or not info.nodes:
            return None
        nodes = self._swap_nodes(run, exclude, info)
        if nodes is None:
            return None
        plan = await self.runs.plan_resume(run)
        t_planned = self.runs.clock.now()
        ckpt = plan.checkpoint
        attempt = run.attempt + 1
        spec = JobSpec(
            run=run.name,
            attempt=attempt,
            nodes=run.spec.nodes,
            command=run.spec.command,
            resume_from=ckpt.path if ckpt else None,
            env=dict(plan.env) if ckpt else {},
        )
        fenced = self.runs.fence()
        if fenced is not None:
            raise SchedulerError(fenced)
        try:
            # the swap's intent, durable before the job acts on it: a daemon that dies from
            # here on leaves it for the next one to finish (never to write again)
            await asyncio.to_thread(
                spares.write_control, control, attempt, nodes, _control_env(spec)
            )
        except (OSError, ValueError) as exc:
            log.warning("run %s: cannot write control file %s: %s", run.name, control, exc)
            return None
        t_written = self.runs.clock.now()
        launch = await self._await_launch(control, attempt)
        if launch is None:
            log.warning(
                "run %s: job %s did not relaunch within %.0f s; resubmitting",
                run.name,
                job_id,
                self.timeout_s,
            )
            return None
        recovery = self._recovery(
            exclude, t_begin, t_planned, t_written, launch, self.runs.clock.now()
        )
        return await self._adopt_launch(
            run,
            exclude,
            reason,
            launch,
            resume=ckpt.path if ckpt else None,
            resume_step=ckpt.step if ckpt else None,
            before=run.nodes,
            t_begin=t_begin,
            t_ended=t_written,
            extra={"recovery": recovery, "checkpoint": plan.as_dict()},
        )

    async def store_acknowledged(self, run: RunInfo) -> None:
        """An attempt relaunched inside its job and stored as submitted (its daemon died
        before the next write) is running since the job acknowledged it, as the dead daemon
        would have stored."""
        if run.attempt_phase is not AttemptPhase.SUBMITTED:
            return
        control = spares.control_path(run.spec.checkpoint_dir)
        launch = await asyncio.to_thread(spares.launch_of, control, run.attempt)
        if launch is not None:
            run.move_attempt(AttemptPhase.RUNNING)
            await self.runs.save_attempt(
                run, {"state": "running", "started_at": launch.launched_at}
            )

    async def _finish_swap(
        self,
        run: RunInfo,
        exclude: set[str],
        reason: str,
        control: Path,
        written: spares.Control,
    ) -> Relaunched | None:
        """A swap the previous daemon wrote to the control file and died before recording
        (the control file is its intent): adopted as the next attempt if the job launched
        it (even if the job has ended since: the poll then records how), on the nodes and
        from the checkpoint the job was given; abandoned (None: the owner stops the job,
        even one stored stopped, then resubmits) if it did not launch it and is gone, or
        does not launch it within timeout_s.
        The control file is never written again for it, so the step is never relaunched
        twice and the store never names a checkpoint the step did not get."""
        t_begin = self.runs.clock.now()
        job_id = run.job_id
        assert job_id is not None  # checked by the caller
        try:
            info = await self.runs.scheduler.job(job_id)
        except SchedulerError as exc:
            log.warning("run %s: cannot finish the in-allocation restart: %s", run.name, exc)
            info = None
        if info is not None and info.state is JobState.RUNNING:
            launch = await self._await_launch(control, written.generation)
        else:  # the job ended meanwhile, perhaps after the relaunch: its end is polled next
            launch = await asyncio.to_thread(spares.launch_of, control, written.generation)
        if launch is None:
            log.warning(
                "run %s: job %s did not relaunch as attempt %d, which the previous daemon "
                "asked for before it stopped; resubmitting",
                run.name,
                job_id,
                written.generation,
            )
            return None
        if info is not None and info.nodes:
            healthy = [n for n in info.nodes if n not in self.runs.unusable(run) | exclude]
            self._spares_left = max(len(healthy) - run.spec.nodes, 0)
        # the step it replaced ran where the job's previous launch says (the store may not
        # know: an attempt is stored before its job is placed)
        before = await asyncio.to_thread(spares.launch_of, control, written.generation - 1)
        step = written.env.get("TRAINWARDEN_RESUME_STEP", "")
        log.warning(
            "run %s: job %s relaunched as attempt %d before the daemon stopped; adopting it",
            run.name,
            job_id,
            written.generation,
        )
        return await self._adopt_launch(
            run,
            exclude,
            reason,
            launch,
            resume=written.env.get("TRAINWARDEN_RESUME_FROM"),
            resume_step=int(step) if step.isdigit() else None,
            before=before.nodes if before is not None else run.nodes,
            t_begin=t_begin,
            t_ended=launch.launched_at,
            extra={
                "recovery": {
                    "kind": "in-allocation",
                    "after_daemon_restart": True,
                    "launched_at": launch.launched_at,
                },
            },
        )

    def _swap_nodes(self, run: RunInfo, exclude: set[str], info: JobInfo) -> list[str] | None:
        """N healthy nodes of the job's allocation for the next step, survivors first (rank
        order kept), then spares; None when the job cannot go on (see swap_in)."""
        bad = self.runs.unusable(run) | exclude
        bad |= {
            n.name for n in self.runs.state.nodes.values() if n.phase is NodePhase.SUSPECT
        } - set(run.nodes)  # a suspect spare is no replacement; a suspect survivor stays
        if info.nodes[0] in bad:  # the batch script runs there: the job goes with it
            log.info("run %s: batch host %s is bad; resubmitting", run.name, info.nodes[0])
            return None
        healthy = [n for n in info.nodes if n not in bad]
        survivors = [n for n in run.nodes if n in healthy]
        self._spares_left = max(len(healthy) - run.spec.nodes, 0)
        nodes = (survivors + [n for n in healthy if n not in survivors])[: run.spec.nodes]
        if len(nodes) < run.spec.nodes:
            log.info(
                "run %s: spares used up (%d healthy node(s) in job %s, %d needed); resubmitting",
                run.name,
                len(healthy),
                info.job_id,
                run.spec.nodes,
            )
            return None
        return nodes

    async def _await_launch(self, control: Path, attempt: int) -> spares.Launch | None:
        """The batch script's acknowledgement that it relaunched the step as ``attempt``."""
        deadline = self.runs.clock.monotonic() + self.timeout_s
        while self.runs.clock.monotonic() < deadline:
            await self.runs.clock.sleep(0.1)
            launch = await asyncio.to_thread(spares.launch_of, control, attempt)
            if launch is not None:
                return launch
        return None

    def _recovery(
        self,
        exclude: set[str],
        t_begin: float,
        t_planned: float,
        t_written: float,
        launch: spares.Launch,
        now: float,
    ) -> dict[str, Any]:
        """The daemon's share of an in-allocation restart's time, for the restart event."""
        heard = [
            t
            for n in exclude
            if (info_n := self.runs.state.nodes.get(n)) is not None
            for t in (info_n.last_report_at, info_n.last_heartbeat_at)
            if t is not None
        ]
        recovery = {
            "kind": "in-allocation",
            # from the bad node's last report or heartbeat to the restart's start (the kill
            # itself is not known here; bench/failover.py measures from it)
            "last_heard_s": round(t_begin - max(heard), 3) if heard else None,
            "drained": all(
                (ni := self.runs.state.nodes.get(n)) is not None and ni.drained for n in exclude
            ),
            "plan_s": round(t_planned - t_begin, 3),  # choosing the checkpoint
            # control file written -> the batch script relaunched the step
            "spare_swap_s": round(max(launch.launched_at - t_written, 0.0), 3),
            "launched_at": launch.launched_at,
            "restart_s": round(now - t_begin, 3),
        }
        return recovery

    async def _adopt_launch(
        self,
        run: RunInfo,
        exclude: set[str],
        reason: str,
        launch: spares.Launch,
        *,
        resume: str | None,
        resume_step: int | None,
        before: Sequence[str],
        t_begin: float,
        t_ended: float,
        extra: dict[str, Any],
    ) -> Relaunched:
        """The job relaunched the step as attempt ``launch.generation``: the old attempt
        (its step on ``before``) ends, the new one runs on the nodes the job acknowledged."""
        job_id = run.job_id
        assert job_id is not None
        survivors = set(before)
        await self._end_swapped(run, exclude, reason, t_begin, t_ended)
        run.attempt = launch.generation
        run.begin_attempt(AttemptPhase.RUNNING)
        run.move(RunPhase.RUNNING)
        run.resumed_from_step = resume_step
        run.attempt_first_step = None
        self.runs.state.place(run, launch.nodes)
        cleared = self.runs.progress.start_attempt(
            run.name, run.attempt, self.runs.clock.now(), run.spec.target_step
        )
        spare = [n for n in launch.nodes if n not in survivors]
        what = (
            f"attempt {run.attempt} relaunched inside job {job_id} on {len(launch.nodes)} "
            f"node(s) (spare {', '.join(spare) or 'none'} in for "
            f"{', '.join(sorted(exclude)) or '-'})"
            + (f", resuming from step {resume_step}" if resume else ", fresh")
        )
        await self.runs.record_started(
            run,
            what,
            job_id,
            sorted(run.excluded),
            resume,
            started_at=launch.launched_at,
            cleared=cleared,
            extra={"in_allocation": True, "spares_left": self._spares_left, **extra},
        )
        return Relaunched(what, job_id, resume_step)

    async def _end_swapped(
        self, run: RunInfo, exclude: set[str], reason: str, t_begin: float, t_ended: float
    ) -> None:
        """The attempt whose step the job replaced ends as a stopped one would (stored once:
        a daemon that died after storing it left it stopped)."""
        run.excluded |= exclude
        if run.phase is not RunPhase.RESTARTING:
            run.move(RunPhase.RESTARTING)
        self.runs.progress.stop(run.name)
        if run.attempt_phase is not AttemptPhase.STOPPED:
            run.move_attempt(AttemptPhase.STOPPING)
            run.move_attempt(AttemptPhase.STOPPED)
            await self.runs.save_attempt(
                run,
                {
                    "state": "stopped",
                    "ended_at": t_ended,
                    "end_reason": f"stopped by trainwarden: {reason}",
                    "last_step": run.last_step,
                },
            )
        run.restarts += 1
        run.restart_times.append(t_begin)
        run.failure_steps.append(run.last_step)


def _control_env(spec: JobSpec) -> dict[str, str]:
    """What changes from one attempt to the next: the attempt and its resume contract."""
    env = {k: v for k, v in spec.job_env().items() if k.startswith("TRAINWARDEN_")}
    if spec.resume_from:
        env.update({k: v for k, v in spec.env.items() if k not in env})
    return env
