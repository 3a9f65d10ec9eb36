"""Progress of runs that do not call the reporter, read from their jobs' own output.

Each tick, for each run whose spec names a log source (``progress`` other than
``reporter``) and whose attempt is submitted or running: ask the scheduler once where the
job's output goes (again every ``lookup_s`` while it names none), read what is new there in
a thread (bounded: see :mod:`trainwarden.supervisor.detectors.logprogress.follow`), and hand
the steps to the same :class:`ProgressTracker` the ranks' reports feed, as rank 0 on the
attempt's first node (where rank 0 prints). So hangs are detected from the log alone; a log
has no per-rank step times, so straggler detection still needs the reporter. What changes --
the parser ``auto`` chose, the log unreadable or back, no log named -- is recorded once, as a
``progress-source`` event, and held for ``trainwarden runs``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from trainwarden.policies.model import Event, EventKind
from trainwarden.supervisor.detectors.logprogress.follow import LogFollower, LogTail
from trainwarden.supervisor.detectors.node_faults import Observation
from trainwarden.supervisor.detectors.progress import ProgressTracker
from trainwarden.supervisor.errors import SchedulerError
from trainwarden.supervisor.model.cluster import RunInfo
from trainwarden.supervisor.model.lifecycle import AttemptPhase
from trainwarden.supervisor.scheduler.base import Scheduler

log = logging.getLogger(__name__)

LOOKUP_S = 10.0  # how often to ask again where a job's output goes while it names none
UNKNOWN_AFTER_S = 60.0  # no log named for this long: say so (once)
GRACE_S = 30.0  # a log unreadable this long after the attempt began: say so (once)
_FOLLOWED = (AttemptPhase.SUBMITTED, AttemptPhase.RUNNING)


@dataclass
class _Watch:
    attempt: int
    job_id: str
    since: float
    path: str | None = None
    follower: LogFollower | None = None
    next_lookup: float = 0.0
    said_unknown: bool = False
    said_problem: str | None = None  # the unreadable log's reason, once recorded
    prev_tail: LogTail | None = None  # the last attempt's file, its offset


class LogWatch:
    """The log followers of the runs that have one, attempt by attempt."""

    def __init__(
        self,
        scheduler: Scheduler,
        progress: ProgressTracker,
        *,
        lookup_s: float = LOOKUP_S,
        unknown_after_s: float = UNKNOWN_AFTER_S,
        grace_s: float = GRACE_S,
    ) -> None:
        self.scheduler = scheduler
        self.progress = progress
        self.lookup_s = lookup_s
        self.unknown_after_s = unknown_after_s
        self.grace_s = grace_s
        self._watches: dict[str, _Watch] = {}

    def describe(self, run: str) -> str | None:
        """What ``trainwarden runs`` shows: the parser in use, the file, a held problem."""
        w = self._watches.get(run)
        if w is None:
            return None
        if w.follower is None:
            return f"job {w.job_id}: waiting for the scheduler to name its log"
        f = w.follower
        text = f"{f.source} from {w.path}"
        if f.problem is not None:
            text += f" ({f.problem})"
        elif f.last_step is None:
            text += " (no step line yet)"
        return text

    async def tick(
        self, runs: Iterable[RunInfo], now: float
    ) -> tuple[list[Observation], list[Event]]:
        """Read every followed log once; the tracker's observations and the events to record."""
        todo = [
            r
            for r in runs
            if r.spec.progress != "reporter"
            and r.job_id is not None
            and r.attempt_phase in _FOLLOWED
        ]
        if not todo:
            return [], []
        done = await asyncio.gather(*(self._one(r, now) for r in todo), return_exceptions=True)
        obs: list[Observation] = []
        events: list[Event] = []
        for run, got in zip(todo, done, strict=True):
            if isinstance(got, BaseException):  # one odd log never stops the others
                log.error("run %s: reading its log failed", run.name, exc_info=got)
                continue
            obs += got[0]
            events += got[1]
        return obs, events

    async def _one(self, run: RunInfo, now: float) -> tuple[list[Observation], list[Event]]:
        assert run.job_id is not None
        w = self._watches.get(run.name)
        if w is None or w.attempt != run.attempt or w.job_id != run.job_id:
            prev = None if w is None else (w.follower.tail if w.follower else w.prev_tail)
            w = self._watches[run.name] = _Watch(run.attempt, run.job_id, now, prev_tail=prev)
        events: list[Event] = []
        if w.path is None:
            path = await self._lookup(run, w, now)
            if path is None:
                if not w.said_unknown and now - w.since >= self.unknown_after_s:
                    w.said_unknown = True
                    events.append(
                        self._event(
                            run,
                            now,
                            f"{self.scheduler.name} names no log file for job {w.job_id}: "
                            "progress cannot be read from it (hangs are then caught only "
                            "by the startup timeout)",
                            problem="no log named",
                        )
                    )
                return [], events
            # the same file as the last attempt's (a fixed --output): go on from where that
            # one was; a truncation or rotation is noticed by the tail itself
            prev = w.prev_tail
            tail = prev if prev is not None and prev.path == path else LogTail(path)
            w.path, w.prev_tail, w.follower = path, None, LogFollower(tail, run.spec.progress)
        assert w.follower is not None
        got = await asyncio.to_thread(w.follower.poll, now)
        for note in got.notes:
            log.info("run %s: %s", run.name, note)
        problem = w.follower.problem
        # a pending job's file may not exist yet: a problem counts once it lasts the grace
        if problem is not None and w.said_problem is None and now - w.since >= self.grace_s:
            w.said_problem = problem
            events.append(self._event(run, now, problem, problem=problem))
        elif problem is None and w.said_problem is not None:
            w.said_problem = None
            events.append(self._event(run, now, f"{w.path} readable again"))
        if got.detected is not None:
            events.append(
                self._event(
                    run,
                    now,
                    f"progress read from {w.path} as {got.detected} prints it "
                    f"(detected on: {got.evidence!r})",
                    detected=got.detected,
                )
            )
        if not got.samples:
            return [], events
        node = run.nodes[0] if run.nodes else "-"
        obs = self.progress.on_steps(run.name, run.attempt, 0, node, got.samples, now)
        top = max(s.step for s in got.samples)
        if run.last_step is None or top > run.last_step:
            run.last_step = top
        if run.attempt_first_step is None:
            run.attempt_first_step = min(s.step for s in got.samples)
        return obs, events

    async def _lookup(self, run: RunInfo, w: _Watch, now: float) -> str | None:
        if now < w.next_lookup:
            return None
        w.next_lookup = now + self.lookup_s
        try:
            return await self.scheduler.job_log(w.job_id)
        except SchedulerError as exc:
            log.warning("run %s: where job %s logs is unknown: %s", run.name, w.job_id, exc)
            return None

    def _event(
        self,
        run: RunInfo,
        now: float,
        message: str,
        *,
        problem: str | None = None,
        detected: str | None = None,
    ) -> Event:
        w = self._watches[run.name]
        data: dict[str, object] = {
            "attempt": run.attempt,
            "job_id": w.job_id,
            "progress": run.spec.progress,
            "path": w.path,
        }
        if problem is not None:
            data["problem"] = problem
        if detected is not None:
            data["detected"] = detected
        return Event(now, EventKind.RUN_PROGRESS_SOURCE, run=run.name, message=message, data=data)
