"""The training-side reporter against the real Mosquitto (and with no broker at all)."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from trainwarden.health.report import (
    CheckpointReport,
    ControlMessage,
    StepReport,
    control_topic,
    encode,
)
from trainwarden.health.reporter import Reporter

BROKER = "127.0.0.1:1883"


pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _steps(msgs: list[object]) -> list[StepReport]:
    return [m for m in msgs if isinstance(m, StepReport)]


def test_first_step_is_sent_at_once_then_batched(run_name: str, collector: Any) -> None:
    rep = Reporter(
        BROKER, run_name, attempt=3, rank=5, node="nid001", group="stage-1", flush_interval_s=1.0
    )
    try:
        assert rep.wait_connected(5)
        t0 = time.monotonic()
        rep.step_done(100, step_s=0.5)
        arrived, first = collector.get()
        assert isinstance(first, StepReport)
        assert arrived - t0 < 0.5, f"first step took {arrived - t0:.3f} s to arrive"
        assert [s.step for s in first.samples] == [100]
        assert (first.attempt, first.rank, first.node, first.group) == (3, 5, "nid001", "stage-1")
        for step in range(101, 131):
            rep.step_done(step)
        time.sleep(1.3)
        batches = _steps(collector.drain())
    finally:
        rep.close()
    steps = [s.step for b in batches for s in b.samples]
    assert steps == list(range(101, 131)), "every step once, in order"
    assert len(batches) <= 2, f"30 quick steps rode in {len(batches)} batches"
    assert rep.stats.steps_dropped == 0 and rep.stats.steps_sent == 31


def test_checkpoint_is_flushed_immediately(run_name: str, collector: Any) -> None:
    rep = Reporter(BROKER, run_name, attempt=0, rank=0, node="nid002", flush_interval_s=30.0)
    try:
        assert rep.wait_connected(5)
        rep.step_done(0)
        collector.get()  # the first step
        t0 = time.monotonic()
        rep.checkpoint_saved(10, "/ckpt/step-00000010")
        arrived, msg = collector.get()
    finally:
        rep.close()
    assert isinstance(msg, CheckpointReport)
    assert (msg.step, msg.path, msg.node) == (10, "/ckpt/step-00000010", "nid002")
    assert arrived - t0 < 0.5


def test_close_flushes_pending_steps(run_name: str, collector: Any) -> None:
    rep = Reporter(BROKER, run_name, attempt=0, rank=1, node="nid003", flush_interval_s=60.0)
    assert rep.wait_connected(5)
    rep.step_done(0)
    collector.get()
    for step in range(1, 6):
        rep.step_done(step)
    rep.close(timeout_s=3)
    steps = [s.step for b in _steps(collector.drain()) for s in b.samples]
    assert steps == [1, 2, 3, 4, 5]


def test_compute_section_is_reported(run_name: str, collector: Any) -> None:
    ticks = iter(float(i) for i in range(1000))
    rep = Reporter(
        BROKER,
        run_name,
        attempt=0,
        rank=0,
        node="nid004",
        flush_interval_s=60.0,
        monotonic=lambda: next(ticks),
    )
    assert rep.wait_connected(5)
    with rep.compute():  # start at t, end at t+1
        pass
    rep.step_done(0)
    _, first = collector.get()
    rep.step_done(1)  # nothing marked: compute_s is None
    rep.close()
    second = _steps(collector.drain())[0]
    assert first.samples[0].compute_s == 1.0
    assert first.samples[0].step_s == 3.0  # created at 0, step_done at 3
    assert second.samples[0].compute_s is None


def test_control_checkpoint_now(run_name: str, collector: Any) -> None:
    rep = Reporter(BROKER, run_name, attempt=0, rank=7, node="nid005")
    try:
        assert rep.wait_connected(5)
        time.sleep(0.2)  # let the SUBACK land before publishing
        assert rep.checkpoint_requested() is False
        msg = ControlMessage(run=run_name, command="checkpoint-now", request_id="r1", ts=1.0)
        collector.publish(control_topic(run_name), encode(msg))
        deadline = time.monotonic() + 3
        while not rep.checkpoint_requested():
            assert time.monotonic() < deadline, "control message never reached the reporter"
            time.sleep(0.02)
        assert rep.checkpoint_requested() is False, "the request is cleared when read"
    finally:
        rep.close()


def test_no_broker_drops_instead_of_stalling(run_name: str) -> None:
    rep = Reporter(
        f"127.0.0.1:{_free_port()}", run_name, attempt=0, rank=0, node="nid006", max_pending=100
    )
    n = 20_000
    worst = 0.0
    t0 = time.perf_counter()
    for step in range(n):
        s = time.perf_counter()
        rep.step_done(step, step_s=0.1)
        worst = max(worst, time.perf_counter() - s)
    mean_us = (time.perf_counter() - t0) / n * 1e6
    t1 = time.monotonic()
    rep.close(timeout_s=2)
    close_s = time.monotonic() - t1
    print(
        f"\nstep_done with broker away: mean {mean_us:.2f} us, worst {worst * 1e6:.0f} us, "
        f"close {close_s:.3f} s, dropped {rep.stats.steps_dropped}"
    )
    assert mean_us < 100, f"step_done costs {mean_us:.1f} us on average"
    assert rep.stats.steps_queued == 100
    assert rep.stats.steps_dropped == n  # 19,900 over the bound + the 100 never sent
    assert close_s < 2.5


def test_without_broker_env_it_is_a_noop() -> None:
    rep = Reporter.from_env({"RANK": "3"})
    assert rep.enabled is False
    with rep.compute():
        rep.step_done(1)
    rep.checkpoint_saved(1, "/x")
    assert rep.checkpoint_requested() is False
    rep.close()
    assert rep.stats.steps_queued == 0


def test_bad_env_gives_noop_not_a_crash() -> None:
    rep = Reporter.from_env({"TRAINWARDEN_BROKER": "host:notaport", "TRAINWARDEN_RUN": "r"})
    assert rep.enabled is False
    rep = Reporter.from_env({"TRAINWARDEN_BROKER": BROKER, "TRAINWARDEN_RUN": "bad name!"})
    assert rep.enabled is False


def test_from_env_reads_everything(run_name: str, collector: Any) -> None:
    rep = Reporter.from_env(
        {
            "TRAINWARDEN_BROKER": BROKER,
            "TRAINWARDEN_RUN": run_name,
            "TRAINWARDEN_ATTEMPT": "2",
            "RANK": "9",
            "TRAINWARDEN_NODE": "nid007",
            "TRAINWARDEN_GROUP": "pp3",
        }
    )
    try:
        assert rep.wait_connected(5)
        rep.step_done(0, step_s=1.0)
        _, msg = collector.get()
    finally:
        rep.close()
    assert (msg.run, msg.attempt, msg.rank, msg.node, msg.group) == (
        run_name,
        2,
        9,
        "nid007",
        "pp3",
    )
