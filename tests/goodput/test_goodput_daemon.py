"""The daemon's history adapter over store records and events, and the stall ledger."""

from __future__ import annotations

import pytest

from trainwarden.health.report import StepSample
from trainwarden.policies.model import Event, EventKind
from trainwarden.supervisor.daemon.goodput import GoodputLedger, report
from trainwarden.supervisor.goodput import advise
from trainwarden.supervisor.store.records import AttemptRecord, CheckpointRecord


def test_ledger_sees_a_save_stall_and_gives_an_event_when_advice_moves() -> None:
    led = GoodputLedger()
    led.steps("llm", 1, [StepSample(step=k, step_s=10.0, ts=10.0 * k) for k in range(1, 11)])
    # step 10 saved a checkpoint: step 11 comes 40 s late
    led.steps("llm", 1, [StepSample(step=11, step_s=10.0, ts=150.0)])
    assert led.save_stalls("llm", {10}) == [(100.0, 40.0)]
    assert led.save_stalls("llm", {5}) == []
    a = advise(40.0, interruptions=0, exposure_s=0.0, prior_mtbf_s=11_135.0, restart_s=300.0)
    assert led.advice_event("llm", a, 0.0) is not None
    assert led.advice_event("llm", a, 1.0) is None  # unchanged: no event


def test_report_from_records() -> None:
    attempts = [
        AttemptRecord(
            "llm", 1, "failed", submitted_at=0.0, started_at=10.0, ended_at=400.0, last_step=30
        ),
        AttemptRecord("llm", 2, "submitted", submitted_at=450.0, resumed_from_step=20),
    ]
    ckpts = [CheckpointRecord("llm", 20, "/c/20", reported_at=220.0, attempt=1, valid=True)]
    events = [
        Event(20.0, EventKind.RUN_STARTED, run="llm", data={"attempt": 1, "step": 1}),
        Event(
            330.0,
            EventKind.RUN_PROGRESS_STALLED,
            run="llm",
            data={"attempt": 1, "last_step": 30, "silent_s": 30.0},
        ),
    ]
    led = GoodputLedger()
    g, adv = report(attempts, ckpts, events, 600.0, ledger=led, run="llm", gpus=16)
    b = g.buckets
    assert sum(b.values()) == pytest.approx(600.0)
    assert b["hung"] == pytest.approx(30.0)  # last step at 300, stalled event at 330
    assert b["drain"] == pytest.approx(120.0)  # 330 -> 450
    assert b["queue"] == pytest.approx(10.0)
    assert adv is None  # no save stall measured yet
    assert g.interruptions == 1


def test_ledger_times_a_synchronous_save_as_no_background_write() -> None:
    led = GoodputLedger()
    led.steps("llm", 1, [StepSample(step=k, step_s=10.0, ts=10.0 * k) for k in range(1, 11)])
    led.checkpoint("llm", 1, 10, 140.5)  # reported as the 40 s save ends
    assert led.background("llm") == (0.0, 0.0, 0.0)  # step 11 not seen: stall unknown
    led.steps("llm", 1, [StepSample(step=11, step_s=10.0, ts=150.0)])
    assert led.background("llm") == (0.0, 0.0, 0.0)  # 0.5 s after the stall: synchronous


def test_ledger_measures_an_asynchronous_save_and_the_advice_counts_it() -> None:
    led = GoodputLedger()
    led.steps("llm", 1, [StepSample(step=k, step_s=10.0, ts=10.0 * k) for k in range(1, 21)])
    # step 20 saved: a 2 s stall (the copy to host), then 7 steps while it was written, each
    # 2 s slower than the median, and the report 70 s after the step
    t = 202.0
    for k in range(21, 28):
        t += 12.0
        led.steps("llm", 1, [StepSample(step=k, step_s=12.0, ts=t)])
    led.checkpoint("llm", 1, 20, 200.0 + 2.0 + 68.0)
    assert led.save_stalls("llm", {20}) == []  # 2 s is below what counts as a stall
    persist, lost, stall = led.background("llm")
    assert persist == pytest.approx(68.0)
    assert stall == pytest.approx(2.0)
    assert lost == pytest.approx(5 * 2.0)  # the steps that ended before the report
    attempts = [AttemptRecord("llm", 1, "running", submitted_at=0.0, started_at=0.0)]
    ckpts = [CheckpointRecord("llm", 20, "/c/20", reported_at=270.0, attempt=1, valid=True)]
    events = [Event(10.0, EventKind.RUN_STARTED, run="llm", data={"attempt": 1, "step": 1})]
    _, adv = report(attempts, ckpts, events, 300.0, ledger=led, run="llm", gpus=16_384)
    assert adv is not None
    assert adv.persist_s == pytest.approx(68.0)
    assert adv.checkpoint_cost_s == pytest.approx(2.0 + 10.0)  # stall + the slower steps
    assert adv.interval_s >= 68.0
