"""Submitting, stopping and restarting runs through a scheduler back-end.

A restart stops what is left of the current attempt, picks the newest checkpoint that
validates (a half-written newest one is skipped), and submits the next attempt on healthy
nodes with ``TRAINWARDEN_RESUME_FROM`` and the rest of its format's resume contract (see
``trainwarden.supervisor.checkpoints.resume``). Restarts of one run are serialised, and
each restarts the attempt it was carried out against: one that waited on the lock while
another started a newer attempt restarts nothing (one restart per failure).

The current attempt is stored stopped only once the scheduler shows its job gone: when the
cancel fails and the job may still run, the restart does not go on (never two jobs of one
run at once) and the executor retries it with backoff. A run that holds spares is first
restarted inside its job (``in_allocation``), and resubmitted only when that cannot be done.
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
from trainwarden.supervisor.daemon.in_allocation import InAllocationRestarts
from trainwarden.supervisor.detectors.node_faults import Observation
from trainwarden.supervisor.detectors.progress import ProgressTracker
from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.model.cluster import ClusterState, RunInfo
from trainwarden.supervisor.model.lifecycle import AttemptPhase, NodePhase, RunPhase
from trainwarden.supervisor.scheduler.base import JobInfo, JobSpec, JobState, NodeState, Scheduler
from trainwarden.supervisor.store.records import AttemptRecord

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
    retry: bool = False  # refused while the attempt's job may run: worth trying again later
    untouched: bool = False  # nothing was stopped or submitted: the attempt runs on


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
        swap_timeout_s: float = 20.0,
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
        # restarts inside the job, for runs that hold spares (swap_timeout_s: how long one
        # waits for the job to relaunch before the run is resubmitted)
        self.in_allocation = InAllocationRestarts(self, swap_timeout_s)

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

    async def restart(
        self, run: RunInfo, exclude: set[str], reason: str, attempt: int | None = None
    ) -> RestartResult:
        """Stop the current attempt, choose the checkpoint, submit the next attempt; or
        relaunch the step inside the job, for a run with spares. Nothing is submitted while
        the current attempt's job may still run (its cancel failed): the result says why.
        ``attempt``: the attempt to restart; when another restart (waited for on the lock)
        has started a newer one, nothing is done (never two restarts for one failure)."""
        async with self.lock(run.name):
            fenced = self.fence()  # checked again here: the lock may have made it wait
            if fenced is not None:
                raise SchedulerError(fenced)
            if attempt is not None and run.attempt != attempt:
                return RestartResult(
                    False,
                    f"not restarted: attempt {run.attempt} of run {run.name} started since "
                    f"this restart of attempt {attempt} was carried out",
                )
            refused = await self._cannot_place(run, exclude)
            if refused is not None:  # the attempt that runs is worth more than none at all
                return RestartResult(False, refused, untouched=True)
            if self.in_allocation.uses_spares(run):
                swapped = await self.in_allocation.swap_in(run, exclude, reason)
                if swapped is not None:
                    return RestartResult(
                        True, swapped.what, swapped.job_id, swapped.resumed_from_step
                    )
            run.excluded |= exclude
            was = run.phase
            run.move(RunPhase.RESTARTING)
            running = await self._stop_current(run, reason)
            if running is not None:  # never a second job while the first may run
                run.move(was if was in (RunPhase.RUNNING, RunPhase.HELD) else RunPhase.RUNNING)
                return RestartResult(False, f"not restarted: {running}", retry=True, untouched=True)
            run.restarts += 1
            run.restart_times.append(self.clock.now())
            run.failure_steps.append(run.last_step)
            plan = await self.plan_resume(run)
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

    async def plan_resume(self, run: RunInfo) -> checkpoints.ResumePlan:
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

    async def stop(self, run: RunInfo, reason: str) -> str | None:
        """Stop the current attempt; why its job may still run when it could not."""
        async with self.lock(run.name):
            return await self._stop_current(run, reason)

    async def _stop_current(self, run: RunInfo, reason: str) -> str | None:
        """Cancel the current attempt's job and store the attempt stopped once the scheduler
        shows the job gone. When it may still run (the cancel failed, slurmctld away), why:
        the attempt stays as it was and is followed as before, and the caller submits
        nothing beside it. The executor retries the restart with backoff; a later one (a
        hang of it, its end, the next daemon's reconcile, an operator) tries again too."""
        if run.job_id is None or run.attempt_phase in (AttemptPhase.COMPLETED, AttemptPhase.FAILED):
            return None
        if run.attempt_phase is AttemptPhase.STOPPED:
            running = await self._stop_stored_stopped(run, run.job_id)
            if running is not None:
                await self._not_stopped(run, running)
            return running
        self.progress.stop(run.name)  # no hang verdict on a job being stopped
        running = await self._cancel_and_wait(run, run.job_id)
        if running is not None:
            self.progress.resume(run.name, run.attempt)  # it goes on: a hang is caught again
            await self._not_stopped(run, running)
            return running
        run.move_attempt(AttemptPhase.STOPPING)
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
        return None

    async def _stop_stored_stopped(self, run: RunInfo, job_id: str) -> str | None:
        """The attempt is stored stopped (its daemon died before the next attempt was
        submitted), yet its job may run: a daemon before this check stored it so even when
        its cancel failed. Stopped now if it still runs; why not when it cannot be."""
        try:
            info = await self.scheduler.job(job_id)
        except SchedulerError as exc:
            return f"cannot tell whether job {job_id} of attempt {run.attempt} still runs: {exc}"
        if info is None or info.state.finished:
            return None
        log.warning(
            "run %s: job %s of attempt %d, stored stopped, is %s; stopping it before resubmitting",
            run.name,
            job_id,
            run.attempt,
            info.state.value,
        )
        return await self._cancel_and_wait(run, job_id)

    async def _not_stopped(self, run: RunInfo, why: str) -> None:
        """The log line and the event of a stop the scheduler did not carry out."""
        log.error("run %s: attempt %d not stopped: %s", run.name, run.attempt, why)
        message = (
            f"attempt {run.attempt} (job {run.job_id}) not stopped: {why}; no attempt is "
            "submitted beside it"
        )
        data = {"attempt": run.attempt, "job_id": run.job_id, "error": why, "stopped": False}
        await self.emit(
            [Event(self.clock.now(), EventKind.ACTION, run=run.name, message=message, data=data)]
        )

    async def _cancel_and_wait(self, run: RunInfo, job_id: str) -> str | None:
        """Cancel the job and wait (up to stop_timeout_s) until it no longer holds a node
        the next attempt may use: None then; otherwise why it may still run (the cancel
        failed and the job is still there, or it outlived the wait)."""
        fenced = self.fence()  # checked again: a swap's wait before it may have been long
        if fenced is not None:
            return fenced
        what = f"job {job_id} (attempt {run.attempt})"
        try:
            await self.scheduler.cancel(job_id)
        except SchedulerError as exc:
            log.warning("run %s: cancel of job %s failed: %s", run.name, job_id, exc)
            try:  # it may have reached the scheduler all the same (a timeout), or ended
                info = await self.scheduler.job(job_id)
            except SchedulerError as again:
                return f"cancel of {what} failed: {exc}; cannot tell whether it runs: {again}"
            if info is not None and _may_run(info.state):
                return f"cancel of {what} failed: {exc}; it is still {info.state.value}"
        deadline = self.clock.monotonic() + self.stop_timeout_s
        seen: JobInfo | None = None
        unseen: SchedulerError | None = None
        while self.clock.monotonic() < deadline:
            try:
                info = await self.scheduler.job(job_id)
            except SchedulerError as exc:  # slurmctld busy: asked again until the deadline
                unseen = exc
            else:
                if info is None or info.state.finished:
                    return None
                if (
                    info.state is JobState.COMPLETING
                    and info.nodes
                    and set(info.nodes) <= self.unusable(run)
                ):
                    # Only nodes this run will not use again still hold the job: a dead
                    # node's share completes when the scheduler marks it down (Slurm:
                    # SlurmdTimeout), and it gives no node to a new job before it has.
                    return None
                seen = info
            await self.clock.sleep(0.25)
        if seen is not None and not _may_run(seen.state):
            # being taken down: the scheduler gives its nodes to no job before it is done
            log.warning(
                "run %s: job %s still completing after %.0f s",
                run.name,
                job_id,
                self.stop_timeout_s,
            )
            return None
        state = seen.state.value if seen is not None else f"not seen ({unseen})"
        return f"{what} still {state} {self.stop_timeout_s:.0f} s after its cancel"

    def unusable(self, run: RunInfo) -> set[str]:
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

    async def announce_stored(self, run: RunInfo, attempt: AttemptRecord, *, in_job: bool) -> None:
        """The run-started event of ``run``'s current attempt, stored by a daemon that died
        before it announced it (the store is the truth; the event is the record). An
        attempt relaunched inside its job (``in_job``) that is stored as submitted is
        running since the job acknowledged it, as the dead daemon would have stored."""
        async with self.lock(run.name):
            if attempt.attempt != run.attempt or attempt.job_id != run.job_id:
                return  # a later attempt replaced it meanwhile: announced on its own
            if in_job:
                await self.in_allocation.store_acknowledged(run)
            how = "relaunched inside job" if in_job else "submitted as job"
            what = (
                f"attempt {run.attempt} {how} {attempt.job_id} on {len(attempt.nodes)} "
                "node(s) before the daemon stopped (announced by the next one)"
            )
            data = {
                "attempt": run.attempt,
                "job_id": attempt.job_id,
                "nodes": list(attempt.nodes),
                "exclude": list(attempt.excluded),
                "resume_from": attempt.resumed_from,
                "resumed_from_step": attempt.resumed_from_step,
                "after_daemon_restart": True,
                **({"in_allocation": True} if in_job else {}),
            }
            await self.emit(
                [
                    Event(
                        self.clock.now(),
                        EventKind.RUN_STARTED,
                        run=run.name,
                        message=what,
                        data=data,
                    )
                ]
            )

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
    ) -> None:
        """The new attempt (placed on ``run.nodes``) in the store and as a run-started event,
        for a submission and an in-allocation relaunch alike."""
        now = self.clock.now()
        await self.save_attempt(
            run,
            {
                "state": "submitted",
                "job_id": job_id,
                "nodes": list(run.nodes),
                "excluded": excluded,
                "resumed_from": resume,
                "resumed_from_step": run.resumed_from_step,
                "submitted_at": now,
            },
        )
        if started_at is not None:  # already running: no queue wait
            await self.save_attempt(run, {"state": "running", "started_at": started_at})
        data = {
            "attempt": run.attempt,
            "job_id": job_id,
            "nodes": list(run.nodes),
            "exclude": excluded,
            "resume_from": resume,
            "resumed_from_step": run.resumed_from_step,
            **extra,
        }
        event = Event(now, EventKind.RUN_STARTED, run=run.name, message=what, data=data)
        await self.emit([event])
        if cleared:
            await self.observe(cleared)

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
        if self.in_allocation.uses_spares(run):
            if await self._placeable(run) >= want + run.spec.spares:
                spec = await self.in_allocation.with_control(run, spec)
            else:  # N + K would wait for nodes the cluster lacks: this attempt goes without
                log.info("run %s: too few nodes to hold spares; submitting without", run.name)
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
        self.state.place(run, self.in_allocation.training_nodes(run, info.nodes if info else ()))
        cleared = self.progress.start_attempt(run.name, attempt, now, run.spec.target_step)
        what = (
            f"attempt {attempt} submitted as job {job_id} on {len(run.nodes) or want} "
            f"node(s)" + (f", resuming from step {resume_step}" if resume else ", fresh")
        )
        await self.record_started(
            run,
            what,
            job_id,
            list(exclude),
            resume,
            cleared=cleared,
            extra={"checkpoint": plan.as_dict()} if plan else {},
        )
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
        if self.in_allocation.uses_spares(run):
            if info.nodes and not run.nodes:  # the job started: its step runs on the first N
                self.state.place(run, self.in_allocation.training_nodes(run, info.nodes))
        elif info.nodes and info.nodes != run.nodes:
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


def _may_run(state: JobState) -> bool:
    """Whether a job in ``state`` may still run its step (completing: being taken down)."""
    return not state.finished and state is not JobState.COMPLETING
