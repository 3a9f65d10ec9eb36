"""Hang detection in virtual time."""

from __future__ import annotations

from trainwarden.health.report import StepSample
from trainwarden.policies.model import ConditionType, EventKind
from trainwarden.supervisor.detectors.progress import ProgressTracker

T0 = 5_000.0


def steps(first: int, n: int, step_s: float, t: float) -> list[StepSample]:
    return [StepSample(step=first + i, step_s=step_s, ts=t) for i in range(n)]


def test_hang_after_k_times_median_with_culprits() -> None:
    p = ProgressTracker(k=2.0, floor_s=5.0)
    p.start_attempt("r", 1, T0)
    first = p.on_steps("r", 1, 0, "n1", steps(1, 10, 4.0, T0 + 40), T0 + 40)
    assert [o.event.kind for o in first] == [EventKind.RUN_STARTED]
    p.on_steps("r", 1, 1, "n2", steps(1, 10, 4.0, T0 + 40), T0 + 40)
    p.on_steps("r", 1, 0, "n1", steps(11, 1, 4.0, T0 + 44), T0 + 44)
    # rank 1 on n2 stopped at step 10; limit = max(2 x 4 s, 5 s) = 8 s after last progress
    assert p.tick(T0 + 51.9) == []
    obs = p.tick(T0 + 52.1)
    assert [(o.subject, o.ctype, o.status) for o in obs] == [("r", ConditionType.RUN_HUNG, True)]
    culprits = obs[0].event.data["culprits"]
    assert culprits == [{"rank": 1, "node": "n2", "step": 10}]
    assert p.tick(T0 + 100) == []  # reported once
    back = p.on_steps("r", 1, 1, "n2", steps(12, 1, 4.0, T0 + 101), T0 + 101)
    assert [(o.ctype, o.status) for o in back] == [(ConditionType.RUN_HUNG, False)]


def test_floor_applies_for_fast_steps_and_startup_timeout_before_first_step() -> None:
    p = ProgressTracker(k=2.0, floor_s=30.0, startup_timeout_s=100.0)
    p.start_attempt("r", 1, T0)
    assert p.tick(T0 + 99) == []
    assert len(p.tick(T0 + 101)) == 1
    p.start_attempt("q", 1, T0)
    p.on_steps("q", 1, 0, "n1", steps(1, 5, 0.1, T0 + 1), T0 + 1)
    assert p.tick(T0 + 30.5) == []
    assert len(p.tick(T0 + 31.5)) == 1


def test_reports_from_an_old_attempt_or_out_of_order_change_nothing() -> None:
    p = ProgressTracker(k=2.0, floor_s=5.0)
    p.start_attempt("r", 2, T0)
    assert p.on_steps("r", 1, 0, "n1", steps(50, 3, 1.0, T0), T0) == []
    p.on_steps("r", 2, 0, "n1", steps(30, 3, 1.0, T0 + 1), T0 + 1)
    p.on_steps("r", 2, 0, "n1", steps(10, 3, 1.0, T0 + 2), T0 + 2)  # stale duplicate
    prog = p.get("r")
    assert prog is not None and prog.last_step == 32 and prog.last_progress_at == T0 + 1


def test_a_run_past_its_final_step_is_finishing_not_hung() -> None:
    p = ProgressTracker(k=2.0, floor_s=5.0)
    p.start_attempt("r", 1, T0, target_step=3)
    p.on_steps("r", 1, 0, "n1", steps(1, 3, 1.0, T0 + 1), T0 + 1)
    assert p.tick(T0 + 600) == []


def test_a_new_attempt_ends_the_previous_hang() -> None:
    p = ProgressTracker(k=2.0, floor_s=5.0, startup_timeout_s=10.0)
    assert p.start_attempt("r", 1, T0) == []
    assert len(p.tick(T0 + 11)) == 1
    cleared = p.start_attempt("r", 2, T0 + 12)
    assert [(o.ctype, o.status) for o in cleared] == [(ConditionType.RUN_HUNG, False)]
    assert len(p.tick(T0 + 23)) == 1  # and a hang of attempt 2 is a new transition
