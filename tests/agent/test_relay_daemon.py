"""The daemon's side of the relay: a NodeSteps message through ``Supervisor.handle`` moves
a run exactly as its reports would one by one (in-process, virtual time, real SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from trainwarden.health.clock import VirtualClock
from trainwarden.health.report import (
    NodeSteps,
    StepReport,
    StepSample,
    encode,
    node_steps_topic,
    steps_topic,
)
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import EventKind
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.supervisor import CoreConfig, Supervisor
from trainwarden.supervisor.model.cluster import RunInfo, RunSpec
from trainwarden.supervisor.scheduler.local import LocalScheduler
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store

T0 = 1_700_000_000.0
NODES = ["n1", "n2"]


@pytest.fixture
async def make_sup(tmp_path: Path) -> AsyncIterator[Callable[[str], Supervisor]]:
    made: list[Supervisor] = []

    def make(name: str) -> Supervisor:
        url = f"sqlite:///{tmp_path / f'{name}.db'}"
        upgrade(url)
        s = Supervisor(
            CoreConfig(),
            VirtualClock(T0),
            AsyncStore(open_store(url)),
            LocalScheduler(NODES, tmp_path / f"logs-{name}"),
            PolicyEngine(load_policy()),
            Metrics(),
        )
        spec = RunSpec(command=("true",), nodes=2, checkpoint_dir=str(tmp_path / "ck"))
        run = s.state.runs["r1"] = RunInfo("r1", "local", spec, T0)
        s.state.place(run, NODES)  # the attempt's allocation: its nodes' ranks count
        s.progress.start_attempt("r1", 0, T0)
        made.append(s)
        return s

    yield make
    for s in made:
        for t in list(s.tasks):
            t.cancel()
        s.store.close()


def _reports(node: str, first: int, last: int) -> list[StepReport]:
    """Two ranks on ``node``, steps ``first..last`` each."""
    return [
        StepReport(
            run="r1",
            attempt=0,
            rank=rank,
            node=node,
            group="dp0",
            samples=[
                StepSample(step=s, step_s=1.0 + rank / 10, compute_s=0.8, ts=T0 + s)
                for s in range(first, last + 1)
            ],
        )
        for rank in (0, 1)
    ]


def _snapshot(sup: Supervisor, seen: list[StepReport]) -> dict[str, Any]:
    p = sup.progress._runs["r1"]
    run = sup.state.runs["r1"]
    return {
        "last_step": (run.last_step, p.last_step),
        "first_step": (run.attempt_first_step, p.first_step),
        "ranks": {r: (rp.node, rp.last_step) for r, rp in p.ranks.items()},
        "step_times": list(p.step_times),
        "straggler_input": [r.model_dump() for r in seen],
        "started": [e.message for e in sup.store.store.events(kinds=[EventKind.RUN_STARTED])],
    }


def _spy(sup: Supervisor) -> list[StepReport]:
    seen: list[StepReport] = []
    original = sup.stragglers.observe_report

    def observe(report: StepReport) -> int:
        seen.append(report)
        return original(report)

    sup.stragglers.observe_report = observe  # type: ignore[method-assign]
    return seen


async def test_node_steps_move_a_run_like_the_reports_one_by_one(
    make_sup: Callable[[str], Supervisor],
) -> None:
    single, batched = make_sup("single"), make_sup("batched")
    seen_single, seen_batched = _spy(single), _spy(batched)
    rounds = [_reports(n, 1, 3) for n in NODES] + [_reports(n, 4, 9) for n in NODES]
    for reports in rounds:
        for r in reports:
            await single.handle(steps_topic(r.run, r.rank), encode(r))
        node = reports[0].node
        msg = NodeSteps(node=node, ts=single.clock.now(), reports=reports)
        await batched.handle(node_steps_topic(node), encode(msg))
    for s in (single, batched):
        await s.store.flush()
    assert batched.rejected == 0 and single.rejected == 0
    a, b = _snapshot(single, seen_single), _snapshot(batched, seen_batched)
    assert a == b
    assert b["last_step"] == (9, 9) and b["first_step"] == (1, 1)
    assert len(b["started"]) == 1
    assert batched.metrics.messages_total.labels(kind="node-steps")._value.get() == 4
    assert single.metrics.messages_total.labels(kind="steps")._value.get() == 8


async def test_a_node_steps_naming_another_node_is_rejected_and_changes_nothing(
    make_sup: Callable[[str], Supervisor],
) -> None:
    sup = make_sup("reject")
    good = NodeSteps(node="n1", ts=T0, reports=_reports("n1", 1, 2))
    await sup.handle(node_steps_topic("n2"), encode(good))  # n2 speaking for n1's ranks
    assert sup.rejected == 1 and sup.state.runs["r1"].last_step is None
    await sup.handle(node_steps_topic("n1"), encode(good))  # the next one is handled
    assert sup.rejected == 1 and sup.state.runs["r1"].last_step == 2
