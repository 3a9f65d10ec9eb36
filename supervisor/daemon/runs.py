"""Submitting, stopping and restarting runs through a scheduler back-end.

A restart stops what is left of the current attempt, picks the newest checkpoint that
validates (a half-written newest one is skipped), and submits the next attempt on healthy
nodes with ``TRAINWARDEN_RESUME_FROM`` and the rest of its format's resume contract (see
``trainwarden.supervisor.checkpoints.resume``). Restarts of one run are serialised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from trainwarden.health.clock import Clock
from trainwarden.policies.model import Event, EventKind
from trainwarden.supervisor.daemon import checkpoints
from trainwarden.supervisor.detectors.node_faults import Observation
from trainwarden.supervisor.detectors.progress import ProgressTracker
from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.model.cluster import ClusterState, RunInfo
from trainwarden.supervisor.model.lifecycle import AttemptPhase, NodePhase, RunPhase
from trainwarden.supervisor.scheduler.base import JobInfo, JobSpec, JobState, NodeState, Scheduler

log = logging.getLogger(__name__)

EventSink = Callable[[list[Event]], Awaitable[object]]
ObservationSink = Callable[[list[Observation]], Awaitable[None]]
AttemptSink = Callable[[RunInfo, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class RestartResult:
    ok: bool
    detail: str
    job_id: str | None = None
    resumed_from_step: int | None = None


class RunManager:
    """Carries out submissions and restarts; watches attempts until they end."""

    def __init__(
        self,
        state: ClusterState,
        scheduler: Scheduler,
        clock: Clock,
        progress: ProgressTracker,
        emit: EventSink,
        save_attempt: AttemptSink,
        observe: ObservationSink,
        *,
        stop_timeout_s: float = 60.0,
        fence: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.state = state
        self.scheduler = scheduler
        self.clock = clock
        self.progress = progress
        self.emit = emit
        self.save_attempt = save_attempt
        self.observe = observe
        self.stop_timeout_s = stop_timeout_s
        # why this daemon must not touch the scheduler now (its lease may have run out): a
        # restart takes a while, so it is checked again before the cancel and the submit
        self.fence = fence
        self._locks: dict[str, asyncio.Lock] = {}
        self._prewarm: asyncio.Task[bool] | None = None

    def lock(self, run: str) -> asyncio.Lock:
        return self._locks.setdefault(run, asyncio.Lock())

    def prewarm(self) -> None:
        """Have the checkpoint validator ready before the first restart needs it."""
        if self._prewarm is None:
            self._prewarm = asyncio.get_running_loop().create_task(
                asyncio.to_thread(checkpoints.prewarm)
            )

    async def start(self, run: RunInfo) -> RestartResult:
        self.prewarm()
        async with self.lock(run.name):
            return await self._submit(run, resume=None, resume_step=None)

    async def restart(self, run: RunInfo, exclude: set[str], reason: str) -> RestartResult:
        """Stop the current attempt, choose the checkpoint, submit the next attempt."""
        async with self.lock(run.name):
            fenced = self.fence()  # checked again here: the lock may have made it wait
            if fenced is not None:
                raise SchedulerError(fenced)
            refused = await self._cannot_place(run, exclude)
            if refused is not None:  # the attempt that runs is worth more than none at all
                return RestartResult(False, refused)
            run.excluded |= exclude
            run.move(RunPhase.RESTARTING)
            await self._stop_current(run, reason)
            run.restarts += 1
            run.restart_times.append(self.clock.now())
            run.failure_steps.append(run.last_step)
            plan = await self._plan_resume(run)
            ckpt = plan.checkpoint
            if ckpt is None:
                log.warning(
                    "run %s: no valid checkpoint in %s; restarting from scratch",
                    run.name,
                    run.spec.checkpoint_dir,
                )
            return await self._submit(
                run,
                resume=ckpt.path if ckpt else None,
                resume_step=ckpt.step if ckpt else None,
                plan=plan,
            )

    async def _plan_resume(self, run: RunInfo) -> checkpoints.ResumePlan:
        """The checkpoint to resume from in the run's format, and the next attempt's resume
        contract (it may point a Megatron-LM tracker at the chosen iteration)."""
        plan = await asyncio.to_thread(
            checkpoints.plan_resume,
            run.spec.checkpoint_dir,
            run.spec.checkpoint_format,
            now=self.clock.now(),
        )
        for judged in plan.scan.refused:
            log.warning(
                "run %s: checkpoint %s refused: %s",
                run.name,
                judged.info.path,
                judged.validation.reason,
            )
        if plan.tracker is not None:
            log.warning(
                "run %s: %s rewritten to %s (was %r, kept at %s)",
                run.name,
                plan.tracker.path,
                plan.tracker.new,
                plan.tracker.old,
                plan.tracker.kept_at,
            )
        return plan

    async def stop(self, run: RunInfo, reason: str) -> None:
        async with self.lock(run.name):
            await self._stop_current(run, reason)

    async def _stop_current(self, run: RunInfo, reason: str) -> None:
        if run.job_id is None or run.attempt_phase in (
            AttemptPhase.COMPLETED,
            AttemptPhase.FAILED,
            AttemptPhase.STOPPED,
        ):
            return
        run.move_attempt(AttemptPhase.STOPPING)
        self.progress.stop(run.name)
        job_id = run.job_id
        try:
            await self.scheduler.cancel(job_id)
        except SchedulerError as exc:
            log.warning("run %s: cancel of job %s failed: %s", run.name, job_id, exc)
        deadline = self.clock.monotonic() + self.stop_timeout_s
        final = None
        while self.clock.monotonic() < deadline:
            info = await self.scheduler.job(job_id)
            if info is None or info.state.finished:
                final = info
                break
            if (
                info.state is JobState.COMPLETING
                and info.nodes
                and set(info.nodes) <= self._unusable(run)
            ):
                # Only nodes this run will not use again still hold the job: a dead node's
                # share completes when the scheduler marks it down (Slurm: SlurmdTimeout),
                # and the scheduler gives no node to a new job before it has.
                final = info
                break
            await self.clock.sleep(0.25)
        run.move_attempt(AttemptPhase.STOPPED)
        await self.save_attempt(
            run,
            {
                "state": "stopped",
                "ended_at": self.clock.now(),
                "end_reason": f"stopped by trainwarden: {reason}",
                "last_step": run.last_step,
            },
        )
        if final is None:
            log.warning(
                "run %s: job %s still not finished after %.0f s",
                run.name,
                job_id,
                self.stop_timeout_s,
            )

    def _unusable(self, run: RunInfo) -> set[str]:
        """Nodes the next attempt of ``run`` will not be placed on."""
        return run.excluded | {
            n.name for n in self.state.nodes.values() if n.drained or n.phase is NodePhase.FAILED
        }

    async def _cannot_place(self, run: RunInfo, exclude: set[str]) -> str | None:
        """Why the next attempt could not be placed, checked before the running attempt is
        stopped; None when it can (or when nothing runs that a restart would stop)."""
        if run.job_id is None or run.attempt_phase not in (
            AttemptPhase.SUBMITTED,
            AttemptPhase.RUNNING,
        ):
            return None
        need = run.spec.min_nodes or run.spec.nodes
        try:
            usable = await self._placeable(run, exclude)
        except SchedulerError as exc:
            return f"not restarted: cannot tell whether the next attempt can be placed: {exc}"
        if usable >= need:
            return None
        return (
            f"not restarted: only {usable} usable node(s) for the next attempt, which needs "
            f"{need}; attempt {run.attempt} (job {run.job_id}) keeps running"
        )

    async def _placeable(self, run: RunInfo, exclude: AbstractSet[str] = frozenset()) -> int:
        """How many nodes this run may use now (healthy, not drained, not excluded)."""
        usable = 0
        for sn in await self.scheduler.nodes():
            info = self.state.nodes.get(sn.name)
            bad = info is not None and (
                info.drained or info.phase in (NodePhase.FAILED, NodePhase.SUSPECT)
            )
            if (
                sn.state in (NodeState.IDLE, NodeState.ALLOCATED)
                and not bad
                and sn.name not in run.excluded
                and sn.name not in exclude
            ):
                usable += 1
        return usable

    async def _submit(
        self,
        run: RunInfo,
        resume: str | None,
        resume_step: int | None,
        plan: checkpoints.ResumePlan | None = None,
    ) -> RestartResult:
        want = run.spec.nodes
        if run.spec.min_nodes is not None:
            usable = await self._placeable(run)
            want = max(run.spec.min_nodes, min(run.spec.nodes, usable))
        exclude = tuple(
            sorted(run.excluded | {n.name for n in self.state.nodes.values() if n.drained})
        )
        attempt = run.attempt + 1
        spec = JobSpec(
            run=run.name,
            attempt=attempt,
            nodes=want,
            command=run.spec.command,
            exclude=exclude,
            resume_from=resume,
            env={**run.spec.env, **(plan.env if plan and resume else {})},
            workdir=run.spec.workdir,
        )
        now = self.clock.now()
        try:
            fenced = self.fence()
            if fenced is not None:  # another daemon may lead: it decides this run's restart
                raise SchedulerError(fenced)
            job_id = await self.scheduler.submit(spec)
        except SchedulerError as exc:
            run.move(RunPhase.HELD)
            await self.emit(
                [
                    Event(
                        now,
                        EventKind.ACTION,
                        run=run.name,
                        message=f"submission of attempt {attempt} failed: {exc}",
                        data={"attempt": attempt, "error": str(exc)},
                    )
                ]
            )
            return RestartResult(False, f"submit failed: {exc}")
        run.attempt = attempt
        run.job_id = job_id
        run.begin_attempt(AttemptPhase.SUBMITTED)
        run.move(RunPhase.RUNNING)
        run.resumed_from_step = resume_step
        run.attempt_first_step = None
        info = await self.scheduler.job(job_id)
        self.state.place(run, info.nodes if info else ())
        cleared = self.progress.start_attempt(run.name, attempt, now, run.spec.target_step)
        await self.save_attempt(
            run,
            {
                "state": "submitted",
                "job_id": job_id,
                "nodes": list(run.nodes),
                "excluded": list(exclude),
                "resumed_from": resume,
                "resumed_from_step": resume_step,
                "submitted_at": now,
            },
        )
        what = (
            f"attempt {attempt} submitted as job {job_id} on {len(run.nodes) or want} "
            f"node(s)" + (f", resuming from step {resume_step}" if resume else ", fresh")
        )
        await self.emit(
            [
                Event(
                    now,
                    EventKind.RUN_STARTED,
                    run=run.name,
                    message=what,
                    data={
                        "attempt": attempt,
                        "job_id": job_id,
                        "nodes": list(run.nodes),
                        "exclude": list(exclude),
                        "resume_from": resume,
                        "resumed_from_step": resume_step,
                        **({"checkpoint": plan.as_dict()} if plan else {}),
                    },
                )
            ]
        )
        if cleared:
            await self.observe(cleared)
        return RestartResult(True, what, job_id, resume_step)

    async def adopt(self, run: RunInfo, info: JobInfo) -> None:
        """Take over a job someone submitted under the run's tag as its first attempt."""
        async with self.lock(run.name):
            # attempt 0: what ranks report when no TRAINWARDEN_ATTEMPT was given to them
            run.attempt = 0
            await self._take_over(run, info, excluded=[], why="")

    async def adopt_next(self, run: RunInfo, info: JobInfo, why: str) -> None:
        """Take over a job of ``run`` that is running but unknown to the store (a daemon
        that crashed between submitting it and recording it) as its next attempt."""
        async with self.lock(run.name):
            now = self.clock.now()
            if run.job_id is not None and run.attempt_phase not in (
                AttemptPhase.COMPLETED,
                AttemptPhase.FAILED,
                AttemptPhase.STOPPED,
            ):
                run.move_attempt(AttemptPhase.STOPPED)
                await self.save_attempt(
                    run,
                    {
                        "state": "stopped",
                        "ended_at": now,
                        "end_reason": f"replaced by job {info.job_id}: {why}",
                        "last_step": run.last_step,
                    },
                )
            run.attempt += 1
            run.restarts += 1
            run.restart_times.append(now)
            run.resumed_from_step = None
            run.attempt_first_step = None
            await self._take_over(run, info, excluded=sorted(run.excluded), why=why)

    async def _take_over(
        self, run: RunInfo, info: JobInfo, *, excluded: list[str], why: str
    ) -> None:
        """``info``'s job is ``run``'s current attempt (``run.attempt`` set by the caller):
        placed, watched, stored and announced."""
        now = self.clock.now()
        run.job_id = info.job_id
        run.begin_attempt(
            AttemptPhase.RUNNING if info.state is JobState.RUNNING else AttemptPhase.SUBMITTED
        )
        run.move(RunPhase.RUNNING)
        self.state.place(run, info.nodes)
        cleared = self.progress.start_attempt(run.name, run.attempt, now, run.spec.target_step)
        self.prewarm()
        await self.save_attempt(
            run,
            {
                "state": "submitted",
                "job_id": info.job_id,
                "nodes": list(info.nodes),
                "excluded": excluded,
                "resumed_from": None,
                "submitted_at": now,
            },
        )
        what = f"adopted job {info.job_id} ({info.state.value}) as attempt {run.attempt}"
        await self.emit(
            [
                Event(
                    now,
                    EventKind.RUN_STARTED,
                    run=run.name,
                    message=f"{what}: {why}" if why else what,
                    data={
                        "attempt": run.attempt,
                        "job_id": info.job_id,
                        "nodes": list(info.nodes),
                        "adopted": True,
                    },
                )
            ]
        )
        if cleared:
            await self.observe(cleared)

    async def poll(self, run: RunInfo) -> JobState | None:
        """Look at the current attempt; returns its state when it just ended."""
        if run.job_id is None or run.attempt_phase not in (
            AttemptPhase.SUBMITTED,
            AttemptPhase.RUNNING,
        ):
            return None
        if self.lock(run.name).locked():
            return None
        try:
            info = await self.scheduler.job(run.job_id)
        except SchedulerError as exc:
            log.warning("run %s: cannot query job %s: %s", run.name, run.job_id, exc)
            return None
        if info is None:
            return None
        if info.nodes and info.nodes != run.nodes:
            self.state.place(run, info.nodes)
        if info.state is JobState.RUNNING and run.attempt_phase is AttemptPhase.SUBMITTED:
            run.move_attempt(AttemptPhase.RUNNING)
            # when the scheduler started it: the time before is queue wait (goodput)
            await self.save_attempt(run, {"state": "running", "started_at": self.clock.now()})
            return None
        if not info.state.finished:
            return None
        ok = info.state is JobState.COMPLETED
        run.move_attempt(AttemptPhase.COMPLETED if ok else AttemptPhase.FAILED)
        self.progress.stop(run.name)
        now = self.clock.now()
        await self.save_attempt(
            run,
            {
                "state": run.attempt_phase.value,
                "ended_at": now,
                "end_reason": f"job {info.job_id} {info.state.value}"
                + (f" (exit {info.exit_code})" if info.exit_code is not None else ""),
                "last_step": run.last_step,
            },
        )
        if ok:  # the job itself says it reached its end
            run.move(RunPhase.COMPLETED)
        return info.state
