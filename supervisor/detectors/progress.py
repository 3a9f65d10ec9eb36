"""Training progress and hangs, per run attempt, in virtual time.

A run is hung when no rank has finished a new step for ``max(k x median step time, floor)``
(before the first step: ``startup_timeout_s``). The ranks and nodes that stopped reporting
first are named as the likely culprits -- evidence for the policy, not a verdict.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from trainwarden.health.report import StepSample
from trainwarden.policies.model import ConditionType, Event, EventKind
from trainwarden.supervisor.detectors.node_faults import Observation
from trainwarden.supervisor.detectors.stragglers.hang import RankLast, hang_culprits


@dataclass
class RankProgress:
    node: str
    last_step: int = -1
    last_report_at: float = 0.0


@dataclass
class AttemptProgress:
    run: str
    attempt: int
    started_at: float
    first_step: int | None = None
    first_step_at: float | None = None
    last_step: int | None = None
    last_progress_at: float | None = None
    step_times: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    ranks: dict[int, RankProgress] = field(default_factory=dict)
    hung: bool = False
    active: bool = True
    target_step: int | None = None  # once reached, a quiet run is finishing, not hung

    def median_step_s(self) -> float | None:
        return statistics.median(self.step_times) if self.step_times else None


class ProgressTracker:
    """Follows the step reports of every active run attempt."""

    def __init__(
        self, *, k: float = 2.0, floor_s: float = 30.0, startup_timeout_s: float = 300.0
    ) -> None:
        self.k = k
        self.floor_s = floor_s
        self.startup_timeout_s = startup_timeout_s
        self._runs: dict[str, AttemptProgress] = {}

    def get(self, run: str) -> AttemptProgress | None:
        return self._runs.get(run)

    def start_attempt(
        self, run: str, attempt: int, now: float, target_step: int | None = None
    ) -> list[Observation]:
        """Follow a new attempt. A hang of the previous attempt ends with it (so a hang of
        this one is a new transition)."""
        old = self._runs.get(run)
        self._runs[run] = AttemptProgress(run, attempt, now, target_step=target_step)
        if old is None or not old.hung:
            return []
        why = f"attempt {attempt} started"
        return [
            Observation(
                Event(
                    now,
                    EventKind.CONDITION_CHANGED,
                    run=run,
                    message=f"hang of attempt {old.attempt} over: {why}",
                ),
                run,
                ConditionType.RUN_HUNG,
                False,
                why,
            )
        ]

    def stop(self, run: str) -> None:
        p = self._runs.get(run)
        if p is not None:
            p.active = False

    def resume(self, run: str, attempt: int) -> None:
        """Follow ``attempt`` again after a ``stop`` that did not happen (its job could not be
        cancelled and goes on): its reports count and a hang of it is caught again."""
        p = self._runs.get(run)
        if p is not None and p.attempt == attempt:
            p.active = True

    def on_steps(
        self, run: str, attempt: int, rank: int, node: str, samples: list[StepSample], now: float
    ) -> list[Observation]:
        p = self._runs.get(run)
        if p is None or attempt != p.attempt or not p.active:
            return []  # a report from an older attempt or an unknown run changes nothing
        r = p.ranks.setdefault(rank, RankProgress(node))
        r.node = node
        r.last_report_at = now
        out: list[Observation] = []
        for s in sorted(samples, key=lambda s: s.step):
            r.last_step = max(r.last_step, s.step)
            if p.last_step is not None and s.step <= p.last_step:
                continue
            if p.first_step is None:
                p.first_step, p.first_step_at = s.step, now
                out.append(
                    Observation(
                        Event(
                            now,
                            EventKind.RUN_STARTED,
                            run=run,
                            message=f"attempt {attempt}: first step {s.step}",
                            data={"attempt": attempt, "step": s.step},
                        )
                    )
                )
            p.last_step = s.step
            p.last_progress_at = now
            if s.step_s > 0:
                p.step_times.append(s.step_s)
        if p.hung and p.last_progress_at == now:
            p.hung = False
            out.append(
                Observation(
                    Event(now, EventKind.CONDITION_CHANGED, run=run, message="progress resumed"),
                    run,
                    ConditionType.RUN_HUNG,
                    False,
                    "progress resumed",
                )
            )
        return out

    def threshold_s(self, p: AttemptProgress) -> float:
        med = p.median_step_s()
        if p.last_progress_at is None or med is None:
            return self.startup_timeout_s
        return max(self.k * med, self.floor_s)

    def tick(self, now: float, heard_from: float | None = None) -> list[Observation]:
        """Hung runs: no step for longer than the threshold, counted from ``heard_from``
        when the daemon only hears again since then (the caller skips ticks while deaf)."""
        out: list[Observation] = []
        for run, p in self._runs.items():
            if not p.active or p.hung:
                continue
            if (
                p.target_step is not None
                and p.last_step is not None
                and p.last_step >= p.target_step
            ):
                continue
            since = p.last_progress_at if p.last_progress_at is not None else p.started_at
            if heard_from is not None and heard_from > since:
                since = heard_from
            limit = self.threshold_s(p)
            if now - since <= limit:
                continue
            p.hung = True
            culprits = hang_culprits(
                {
                    rank: RankLast(r.node, r.last_step, r.last_report_at)
                    for rank, r in p.ranks.items()
                }
            )
            where = ", ".join(f"rank {r} on {p.ranks[r].node}" for r in culprits.ranks[:8])
            what = f"no step for {now - since:.1f} s (limit {limit:.1f} s); " + (
                f"stopped first: {where} ({culprits.reason})" if where else culprits.reason
            )
            out.append(
                Observation(
                    Event(
                        now,
                        EventKind.RUN_PROGRESS_STALLED,
                        run=run,
                        message=what,
                        data={
                            "attempt": p.attempt,
                            "last_step": p.last_step,
                            "silent_s": round(now - since, 3),
                            "limit_s": limit,
                            "culprits": [
                                {"rank": r, "node": p.ranks[r].node, "step": p.ranks[r].last_step}
                                for r in culprits.ranks
                            ],
                            "culprit_nodes": list(culprits.nodes),
                        },
                    ),
                    run,
                    ConditionType.RUN_HUNG,
                    True,
                    what,
                )
            )
        return out
