"""Daly's interval against the paper's own figures; the expected ETTR; the pooled rate."""

from __future__ import annotations

import math

import pytest

from trainwarden.supervisor.goodput import advise, daly_interval, expected_ettr, moved, prior
from trainwarden.supervisor.goodput.advice import posterior_mtbf, stall_for


@pytest.mark.parametrize(
    ("mtbf_min", "expected_min"),
    [(24 * 60, 117.0), (6 * 60, 57.0), (15, 9.1)],  # Daly 2006, figs. 3-5: delta = 5 min
)
def test_daly_matches_the_papers_optima(mtbf_min: float, expected_min: float) -> None:
    assert daly_interval(300.0, mtbf_min * 60) / 60 == pytest.approx(expected_min, abs=0.5)


def test_daly_is_m_when_the_save_costs_two_mtbfs() -> None:
    assert daly_interval(1000.0, 400.0) == 400.0


def test_expected_ettr_is_best_near_the_optimum() -> None:
    m, d = 11_000.0, 40.0
    tau = daly_interval(d, m)
    best = expected_ettr(tau, d, m, 300.0)
    assert best > expected_ettr(tau / 3, d, m, 300.0)
    assert best > expected_ettr(tau * 3, d, m, 300.0)
    # first order: waste ~ delta/tau + tau/2M + R/M
    assert 1 - best == pytest.approx(d / tau + (tau + d) / (2 * m) + 300 / m, rel=0.15)


def test_pooled_rate_starts_at_the_prior_and_follows_the_data() -> None:
    m0 = prior.prior_mtbf_s(16_384)
    assert m0 / 3600 == pytest.approx(54 * 24 / 419, rel=1e-6)
    assert posterior_mtbf(0, 0.0, m0) == m0
    assert posterior_mtbf(1000, 1000 * 3600.0, m0) == pytest.approx(3600, rel=0.02)


def test_advice_and_when_it_moves() -> None:
    a = advise(
        40.0,
        interruptions=0,
        exposure_s=0.0,
        prior_mtbf_s=11_135.0,
        restart_s=300.0,
        current_interval_s=10_800.0,
    )
    assert a.interval_s == pytest.approx(daly_interval(40.0, 11_135.0))
    assert a.ettr_current is not None and a.ettr_current < a.ettr_advised
    assert moved(None, 100.0) and moved(100.0, 121.0) and not moved(100.0, 119.0)


def test_stall_needed_for_a_target() -> None:
    need = stall_for(0.95, 11_135.0, 300.0)
    assert need is not None
    tau = daly_interval(need, 11_135.0)
    assert expected_ettr(tau, need, 11_135.0, 300.0) == pytest.approx(0.95, abs=1e-6)
    assert stall_for(0.99, 1000.0, 600.0) is None
    assert not math.isnan(need)


def test_an_asynchronous_save_is_never_advised_more_often_than_it_can_be_written() -> None:
    from trainwarden.supervisor.goodput.advice import advised_interval, ettr_at

    m = 11_135.0
    assert advised_interval(0.5, m) < 120.0  # Daly alone: a cheap save, often
    assert advised_interval(0.5, m, persist_s=120.0) == 120.0
    a = advise(0.5, interruptions=0, exposure_s=0.0, prior_mtbf_s=m, restart_s=300.0)
    b = advise(
        0.5, interruptions=0, exposure_s=0.0, prior_mtbf_s=m, restart_s=300.0, persist_s=120.0
    )
    assert b.interval_s == 120.0 and b.persist_s == 120.0
    # the newest save is not usable while it is written: a failure loses that much more
    assert b.ettr_advised < a.ettr_advised
    assert b.ettr_advised == pytest.approx(ettr_at(120.0, 0.5, m, 300.0, 120.0))


def test_restart_for_is_the_largest_restart_cost_that_still_meets_the_target() -> None:
    from trainwarden.supervisor.goodput.advice import advised_interval, ettr_at, restart_for

    m, delta = 11_135.0, 5.0
    r = restart_for(0.95, delta, m)
    assert r is not None and r > 0
    tau = advised_interval(delta, m)
    assert ettr_at(tau, delta, m, r) == pytest.approx(0.95, abs=1e-6)
    assert ettr_at(tau, delta, m, r * 1.1) < 0.95
    assert restart_for(0.999, 400.0, m) is None  # the saves alone cost more than 0.1 %
