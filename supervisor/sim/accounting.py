"""The simulated run's history as the daemon would record it, for the shared goodput accounting.

The simulator keeps, per attempt, what the daemon's store and progress tracker hold (submitted,
ranks up, first and last step, the fault, its detection, the job's end), plus the checkpoints,
save stalls and guard holds; ``history`` turns that into a
:class:`~trainwarden.supervisor.goodput.RunHistory`, so ``trainwarden sim`` reports ETTR and its
buckets with the very function the daemon uses (``supervisor.goodput.account``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from trainwarden.supervisor.goodput import AttemptSpan, Goodput, RunHistory, account
from trainwarden.supervisor.sim.cluster import SimRun
from trainwarden.supervisor.sim.scenario import RunSpec


@dataclass
class Spans:
    """The attempts so far (the last is the current one) and the restart holds."""

    attempts: list[AttemptSpan] = field(default_factory=list)
    holds: list[tuple[float, float]] = field(default_factory=list)
    hold_since: float | None = None

    @property
    def current(self) -> AttemptSpan | None:
        return self.attempts[-1] if self.attempts else None

    def update(self, **fields: object) -> None:
        if self.attempts:
            self.attempts[-1] = replace(self.attempts[-1], **fields)  # type: ignore[arg-type]

    def submitted(self, attempt: int, now: float, resumed_from: int, step_s: float) -> None:
        self.attempts.append(
            AttemptSpan(attempt, now, resumed_from_step=resumed_from or None, step_s=step_s)
        )

    def running(self, spec: RunSpec, first_step: int, first_step_at: float) -> None:
        """The ranks are up; the restart cost was queue wait, then start-up (of which the
        checkpoint load is the last ``checkpoint_load_s``), as the scenario splits it."""
        cur = self.current
        if cur is not None and cur.running_at is None:
            queue = min(spec.queue_wait_s, spec.restart_cost_s) if cur.attempt > 1 else 0.0
            self.update(
                running_at=cur.submitted_at + queue,
                first_step=first_step,
                first_step_at=first_step_at,
                load_s=spec.checkpoint_load_s if cur.resumed_from_step else None,
            )

    def stopped(self, now: float, run: SimRun, *, hung: bool = False) -> None:
        """The run stopped stepping (a fault, a hang, a restart asked for while it ran)."""
        cur = self.current
        if cur is None or cur.fault_at is not None:
            return
        step, at = run.last_step(now)
        stepped = cur.first_step_at is not None and at >= cur.first_step_at
        self.update(
            fault_at=now,
            hung=hung,
            last_step=step if stepped else None,
            last_step_at=at if stepped else None,
            first_step=cur.first_step if stepped else None,
            first_step_at=cur.first_step_at if stepped else None,
        )

    def detected(self, now: float) -> None:
        cur = self.current
        if cur is not None and cur.fault_at is not None and cur.detected_at is None:
            self.update(detected_at=now)

    def hold(self, now: float) -> None:
        if self.hold_since is None:
            self.hold_since = now

    def released(self, now: float) -> None:
        if self.hold_since is not None:
            self.holds.append((self.hold_since, now))
            self.hold_since = None


def history(spans: Spans, run: SimRun, end: float) -> RunHistory:
    atts = list(spans.attempts)
    if atts and atts[-1].fault_at is None and atts[-1].first_step_at is not None:
        step, at = run.last_step(end)  # the current attempt: stepping up to now
        if at >= atts[-1].first_step_at:
            atts[-1] = replace(atts[-1], last_step=step, last_step_at=at)
        else:  # it has not finished its first step yet
            atts[-1] = replace(atts[-1], first_step=None, first_step_at=None)
    holds = [*spans.holds]
    if spans.hold_since is not None:
        holds.append((spans.hold_since, end))
    return RunHistory(
        0.0, end, tuple(atts), tuple(run.ckpt_log), tuple(run.stall_log), tuple(holds)
    )


def goodput(spans: Spans, run: SimRun, end: float) -> Goodput:
    return account(history(spans, run, end))
