"""The accounting over hand-built histories whose buckets are worked out by hand."""

from __future__ import annotations

import pytest

from trainwarden.supervisor.goodput import BUCKETS, AttemptSpan, RunHistory, account, demo_figures


def _sum(b: dict[str, float]) -> float:
    return sum(b.values())


def test_one_fault_resumed_from_an_older_checkpoint() -> None:
    # 10 s steps from t=100 (first step, step 1, done at 110); checkpoint of step 50 at 600;
    # last step 80 at 900; the node dies at 905, detected at 925; next attempt submitted at
    # 1000, running at 1300, first step (51) done at 1510 -> began 1500, 60 s of that is the
    # checkpoint load; it runs to the end of the window at 2000.
    h = RunHistory(
        0.0,
        2000.0,
        (
            AttemptSpan(
                1,
                0.0,
                running_at=50.0,
                first_step_at=110.0,
                first_step=1,
                last_step=80,
                last_step_at=900.0,
                fault_at=905.0,
                detected_at=925.0,
                step_s=10.0,
            ),
            AttemptSpan(
                2,
                1000.0,
                running_at=1300.0,
                first_step_at=1510.0,
                first_step=51,
                resumed_from_step=50,
                load_s=60.0,
                step_s=10.0,
            ),
        ),
        checkpoints=((50, 600.0),),
        stalls=((600.0, 20.0),),
    )
    b = dict(account(h).buckets)
    assert b["queue"] == pytest.approx(50 + 300)  # 0->50, 1000->1300
    assert b["startup"] == pytest.approx(50 + 140)  # 50->100, 1300->1440
    assert b["checkpoint_load"] == pytest.approx(60)  # 1440->1500
    assert b["checkpoint_stall"] == pytest.approx(20)  # 600->620, the save after step 50
    assert b["rework"] == pytest.approx(300 - 20 + 5)  # steps 51..80 (620->900), 900->905
    assert b["detection"] == pytest.approx(20)
    assert b["drain"] == pytest.approx(75)  # 925->1000
    assert b["productive"] == pytest.approx(500 + 500)  # 100->600, 1500->2000
    assert b["other"] == 0
    assert _sum(b) == pytest.approx(2000.0)
    assert account(h).ettr == pytest.approx(1000 / 2000)
    assert account(h).interruptions == 1


def test_hang_then_a_held_restart_and_nothing_recorded_at_the_end() -> None:
    # steps 100->500 (steps 1..40), steps stop; RunHung at 560; the restart is held by a
    # guard 560->800, submitted 800, never runs in the window (ends 1000); all of attempt 1
    # is lost because attempt 2 resumes from scratch
    h = RunHistory(
        0.0,
        1000.0,
        (
            AttemptSpan(
                1,
                0.0,
                running_at=0.0,
                first_step_at=110.0,
                first_step=1,
                last_step=40,
                last_step_at=500.0,
                detected_at=560.0,
                hung=True,
                step_s=10.0,
            ),
            AttemptSpan(2, 800.0),
        ),
        holds=((560.0, 800.0),),
    )
    b = dict(account(h).buckets)
    assert b["rework"] == pytest.approx(400)
    assert b["hung"] == pytest.approx(60)
    assert b["held"] == pytest.approx(240)
    assert b["startup"] == pytest.approx(100 + 200)  # 0->100; 800->1000 (queue not visible)
    assert b["productive"] == 0
    assert _sum(b) == pytest.approx(1000.0)


def test_last_attempt_that_failed_keeps_only_up_to_its_checkpoint() -> None:
    h = RunHistory(
        0.0,
        300.0,
        (
            AttemptSpan(
                1,
                0.0,
                first_step_at=10.0,
                first_step=1,
                last_step=20,
                last_step_at=200.0,
                detected_at=210.0,
                step_s=10.0,
            ),
        ),
        checkpoints=((10, 100.0),),
    )
    b = dict(account(h).buckets)
    assert b["productive"] == pytest.approx(100)
    assert b["rework"] == pytest.approx(100 + 10)
    assert b["drain"] == pytest.approx(90)
    assert _sum(b) == pytest.approx(300)


def test_an_empty_window_is_all_other_and_the_demo_figures_add_up() -> None:
    h = RunHistory(0.0, 50.0, ())
    assert account(h).buckets["other"] == 50
    fig = demo_figures(
        RunHistory(0.0, 50.0, (AttemptSpan(1, 0.0, first_step_at=5.0, first_step=1, step_s=5.0),))
    )
    g = fig["goodput"]
    assert isinstance(g, dict)
    assert set(g["buckets"]) == set(BUCKETS)
    assert sum(g["buckets"].values()) == pytest.approx(g["wall_s"], rel=0.01)
    assert fig["ettr"] == 1.0
