"""The simulated run's asynchronous saves: usable only once written, lost if the job dies first,
and a save due while the previous one is still being written waits for it."""

from __future__ import annotations

import pytest

from trainwarden.supervisor.sim.cluster import RunState, SimRun
from trainwarden.supervisor.sim.scenario import RunSpec


def _run(**kw: float) -> SimRun:
    spec = RunSpec(step_s=10.0, checkpoint_interval_s=100.0, checkpoint_stall_s=1.0, **kw)
    return SimRun(spec, state=RunState.RUNNING)


def test_a_synchronous_save_counts_when_its_stall_ends() -> None:
    run = _run()
    run.advance(101.0)
    assert run.ckpt == 100.0 and run.ckpt_log == [(10, 101.0)]


def test_an_asynchronous_save_counts_only_once_written() -> None:
    run = _run(checkpoint_persist_s=30.0)
    run.advance(120.0)
    assert run.ckpt == 0.0  # staged at 101, being written until 131
    run.advance(131.0)
    assert run.ckpt == 100.0 and run.ckpt_log == [(10, 131.0)]
    assert run.progress == pytest.approx(130.0)  # training went on while it was written


def test_a_failure_during_the_write_loses_that_save() -> None:
    run = _run(checkpoint_persist_s=30.0)
    run.advance(101.0)
    run.lose(120.0)
    assert run.ckpt == 0.0 and run.progress == 0.0
    assert run.ckpts_lost_in_flight == 1
    assert run.lost_work_s == pytest.approx(119.0)  # 120 s less the 1 s stall
    run.advance(200.0)
    assert run.ckpt_log == []  # the dead writer never finishes


def test_a_save_due_while_the_last_is_written_waits_for_it() -> None:
    run = _run(checkpoint_persist_s=150.0)
    run.advance(400.0)
    # step 10 saved at 100 (stall to 101, written at 251); step 20 was due at 201: it waits
    # until 251, then its own 1 s stall, and is written at 252 + 150 = 402
    assert run.stall_log[:2] == [(100.0, 1.0), (201.0, 51.0)]
    assert run.ckpt_log == [(10, 251.0)]
    run.advance(402.0)
    assert run.ckpt_log == [(10, 251.0), (20, 402.0)]
