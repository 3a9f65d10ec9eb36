"""Submitting, stopping and restarting runs through a scheduler back-end.

A restart stops what is left of the current attempt, picks the newest checkpoint that
validates (a half-written newest one is skipped), and submits the next attempt on healthy
nodes with ``TRAINWARDEN_RESUME_FROM`` and the rest of its format's resume contract (see
``trainwarden.supervisor.checkpoints.resume``). Restarts of one run are serialised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trainwarden.health.clock import Clock
from trainwarden.policies.model import Event, EventKind
from trainwarden.supervisor.daemon import checkpoints, spares
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
        # how long an in-allocation restart waits for the job to relaunch before resubmitting
        self.swap_timeout_s = swap_timeout_s
        # why this daemon must not touch the scheduler now (its lease may have run out): a
        # restart takes a while, so it is checked again before the cancel and the submit
        self.fence = fence
        self._locks: dict[str, asyncio.Lock] = {}
        self._prewarm: asyncio.Task[bool] | None = None
        self._spares_left = 0  # healthy spare nodes left in the job at the last swap

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
            if self._uses_spares(run):
                swapped = await self._swap_in(run, exclude, reason)
                if swapped is not None:
                    return swapped
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
        await self._cancel_and_wait(run, run.job_id)
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

    async def _cancel_and_wait(self, run: RunInfo, job_id: str) -> None:
        """Cancel the job and wait (up to stop_timeout_s) until it no longer holds a node
        the next attempt may use."""
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

    # --- restarts inside the allocation (RunSpec.spares) -----------------------------------

    def _uses_spares(self, run: RunInfo) -> bool:
        return run.spec.spares > 0 and self.scheduler.name == "slurm"

    def _training_nodes(self, run: RunInfo, nodes: Sequence[str]) -> tuple[str, ...]:
        """The nodes the training step runs on: with spares, the first N of the allocation
        (what the batch script starts on); the rest wait as spares and are not watched."""
        if not self._uses_spares(run):
            return tuple(nodes)
        return tuple(nodes[: run.spec.nodes])

    async def _with_control(self, run: RunInfo, spec: JobSpec) -> JobSpec:
        """Hold the spares too, and give the job the control file its script follows."""
        control = spares.control_path(run.spec.checkpoint_dir)
        await asyncio.to_thread(spares.write_control, control, spec.attempt, (), _control_env(spec))
        env = {
            **spec.env,
            "TW_CONTROL_FILE": str(control),
            "TW_TRAIN_NODES": str(spec.nodes),
        }
        return replace(spec, spares=run.spec.spares, env=env)

    def _swap_nodes(self, run: RunInfo, exclude: set[str], info: JobInfo) -> list[str] | None:
        """N healthy nodes of the job's allocation for the next step, survivors first (rank
        order kept), then spares; None when the job cannot go on (see _swap_in)."""
        bad = self._unusable(run) | exclude
        bad |= {n.name for n in self.state.nodes.values() if n.phase is NodePhase.SUSPECT} - set(
            run.nodes
        )  # a suspect spare is no replacement; a suspect survivor stays
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
        deadline = self.clock.monotonic() + self.swap_timeout_s
        while self.clock.monotonic() < deadline:
            await self.clock.sleep(0.1)
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
            if (info_n := self.state.nodes.get(n)) is not None
            for t in (info_n.last_report_at, info_n.last_heartbeat_at)
            if t is not None
        ]
        recovery = {
            "kind": "in-allocation",
            # from the bad node's last report or heartbeat to the restart's start (the kill
            # itself is not known here; bench/failover.py measures from it)
            "last_heard_s": round(t_begin - max(heard), 3) if heard else None,
            "drained": all(
                (ni := self.state.nodes.get(n)) is not None and ni.drained for n in exclude
            ),
            "plan_s": round(t_planned - t_begin, 3),  # choosing the checkpoint
            # control file written -> the batch script relaunched the step
            "spare_swap_s": round(max(launch.launched_at - t_written, 0.0), 3),
            "launched_at": launch.launched_at,
            "restart_s": round(now - t_begin, 3),
        }
        return recovery

    async def _end_swapped(
        self, run: RunInfo, exclude: set[str], reason: str, t_begin: float, t_ended: float
    ) -> None:
        """The attempt whose step the job replaced ends as a stopped one would (stored once:
        a daemon that died after storing it left it stopped)."""
        run.excluded |= exclude
        if run.phase is not RunPhase.RESTARTING:
            run.move(RunPhase.RESTARTING)
        self.progress.stop(run.name)
        if run.attempt_phase is not AttemptPhase.STOPPED:
            run.move_attempt(AttemptPhase.STOPPING)
            run.move_attempt(AttemptPhase.STOPPED)
            await self.save_attempt(
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

    async def _swap_in(self, run: RunInfo, exclude: set[str], reason: str) -> RestartResult | None:
        """Relaunch the training step inside the running job on N healthy nodes, a spare in
        place of the bad one: no new sbatch, so no queue wait. None when it cannot (no job
        running, the batch host is bad, spares used up, the job did not relaunch in time):
        the caller then resubmits as without spares. A swap a crashed daemon left unrecorded
        is finished first (see _finish_swap)."""
        if run.job_id is None:
            return None
        control = spares.control_path(run.spec.checkpoint_dir)
        written = await asyncio.to_thread(spares.read_control, control)
        if written is not None and written.generation == run.attempt + 1 and written.nodes:
            finished = await self._finish_swap(run, exclude, reason, control, written)
            if finished is None or not set(run.nodes) & (self._unusable(run) | exclude):
                return finished
            # the job relaunched on a node this restart must leave: swap again from there
        if run.attempt_phase not in (AttemptPhase.SUBMITTED, AttemptPhase.RUNNING):
            return None
        t_begin = self.clock.now()
        job_id = run.job_id
        try:
            info = await self.scheduler.job(job_id)
        except SchedulerError as exc:
            log.warning("run %s: no in-allocation restart: %s", run.name, exc)
            return None
        if info is None or info.state is not JobState.RUNNING or not info.nodes:
            return None
        nodes = self._swap_nodes(run, exclude, info)
        if nodes is None:
            return None
        plan = await self._plan_resume(run)
        t_planned = self.clock.now()
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
        fenced = self.fence()
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
        t_written = self.clock.now()
        launch = await self._await_launch(control, attempt)
        if launch is None:
            log.warning(
                "run %s: job %s did not relaunch within %.0f s; resubmitting",
                run.name,
                job_id,
                self.swap_timeout_s,
            )
            return None
        recovery = self._recovery(exclude, t_begin, t_planned, t_written, launch, self.clock.now())
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

    async def _finish_swap(
        self,
        run: RunInfo,
        exclude: set[str],
        reason: str,
        control: Path,
        written: spares.Control,
    ) -> RestartResult | None:
        """A swap the previous daemon wrote to the control file and died before recording
        (the control file is its intent): adopted as the next attempt if the job launched
        it (even if the job has ended since: the poll then records how), on the nodes and
        from the checkpoint the job was given; abandoned (None: the caller resubmits) if it
        did not launch it and is gone, or does not launch it within swap_timeout_s.
        The control file is never written again for it, so the step is never relaunched
        twice and the store never names a checkpoint the step did not get."""
        t_begin = self.clock.now()
        job_id = run.job_id
        assert job_id is not None  # checked by the caller
        try:
            info = await self.scheduler.job(job_id)
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
            await self._abandon_swap(run, info, exclude)
            return None
        if info is not None and info.nodes:
            healthy = [n for n in info.nodes if n not in self._unusable(run) | exclude]
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

    async def _abandon_swap(self, run: RunInfo, info: JobInfo | None, exclude: set[str]) -> None:
        """Before the resubmission: a job whose attempt the store already shows stopped (the
        previous daemon died after storing that) is not stopped again by the caller, so it
        is cancelled here; never two attempts of one run at once."""
        if run.attempt_phase is not AttemptPhase.STOPPED or info is None or info.state.finished:
            return
        fenced = self.fence()  # checked again: the swap's wait may have been long
        if fenced is not None:
            raise SchedulerError(fenced)
        log.warning("run %s: stopping job %s before resubmitting", run.name, info.job_id)
        run.excluded |= exclude
        await self._cancel_and_wait(run, info.job_id)

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
    ) -> RestartResult:
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
        self.state.place(run, launch.nodes)
        cleared = self.progress.start_attempt(
            run.name, run.attempt, self.clock.now(), run.spec.target_step
        )
        spare = [n for n in launch.nodes if n not in survivors]
        what = (
            f"attempt {run.attempt} relaunched inside job {job_id} on {len(launch.nodes)} "
            f"node(s) (spare {', '.join(spare) or 'none'} in for "
            f"{', '.join(sorted(exclude)) or '-'})"
            + (f", resuming from step {resume_step}" if resume else ", fresh")
        )
        await self._record_started(
            run,
            what,
            job_id,
            sorted(run.excluded),
            resume,
            started_at=launch.launched_at,
            cleared=cleared,
            extra={"in_allocation": True, "spares_left": self._spares_left, **extra},
        )
        return RestartResult(True, what, job_id, resume_step)

    async def announce_stored(self, run: RunInfo, attempt: AttemptRecord, *, in_job: bool) -> None:
        """The run-started event of ``run``'s current attempt, stored by a daemon that died
        before it announced it (the store is the truth; the event is the record). An
        attempt relaunched inside its job (``in_job``) that is stored as submitted is
        running since the job acknowledged it, as the dead daemon would have stored."""
        async with self.lock(run.name):
            if attempt.attempt != run.attempt or attempt.job_id != run.job_id:
                return  # a later attempt replaced it meanwhile: announced on its own
            if in_job and run.attempt_phase is AttemptPhase.SUBMITTED:
                control = spares.control_path(run.spec.checkpoint_dir)
                launch = await asyncio.to_thread(spares.launch_of, control, run.attempt)
                if launch is not None:
                    run.move_attempt(AttemptPhase.RUNNING)
                    await self.save_attempt(
                        run, {"state": "running", "started_at": launch.launched_at}
                    )
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

    async def _record_started(
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
        if self._uses_spares(run):
            if await self._placeable(run) >= want + run.spec.spares:
                spec = await self._with_control(run, spec)
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
        self.state.place(run, self._training_nodes(run, info.nodes if info else ()))
        cleared = self.progress.start_attempt(run.name, attempt, now, run.spec.target_step)
        what = (
            f"attempt {attempt} submitted as job {job_id} on {len(run.nodes) or want} "
            f"node(s)" + (f", resuming from step {resume_step}" if resume else ", fresh")
        )
        await self._record_started(
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
        if self._uses_spares(run):
            if info.nodes and not run.nodes:  # the job started: its step runs on the first N
                self.state.place(run, self._training_nodes(run, info.nodes))
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


def _control_env(spec: JobSpec) -> dict[str, str]:
    """What changes from one attempt to the next: the attempt and its resume contract."""
    env = {k: v for k, v in spec.job_env().items() if k.startswith("TRAINWARDEN_")}
    if spec.resume_from:
        env.update({k: v for k, v in spec.env.items() if k not in env})
    return env
