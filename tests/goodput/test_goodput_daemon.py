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
