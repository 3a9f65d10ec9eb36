"""An asynchronous save seen by the daemon: a real torch DCP ``async_save``, the ranks' step
reports and the checkpoint report sent when the write finished, through the supervisor's
message path, its SQLite store and the goodput view (``trainwarden runs goodput``)."""

from __future__ import annotations

import asyncio
import sys
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from trainwarden.health.clock import SystemClock
from trainwarden.health.report import (
    CheckpointReport,
    Heartbeat,
    StepReport,
    StepSample,
    encode,
    node_checkpoint_topic,
    node_topic,
    steps_topic,
)
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.api.service import DaemonService
from trainwarden.supervisor.daemon import operations as ops
from trainwarden.supervisor.daemon import upkeep
from trainwarden.supervisor.daemon.context import CoreConfig
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.model.cluster import RunInfo, RunSpec
from trainwarden.supervisor.scheduler.local import LocalScheduler
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store

pytestmark = pytest.mark.integration  # the run's attempt is a real process (local back-end)
NODES = ["n1", "n2"]


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    sched = LocalScheduler(NODES, tmp_path / "logs", stop_grace_s=3.0)
    store = AsyncStore(open_store(url))
    s = Supervisor(
        CoreConfig(), SystemClock(), store, sched, PolicyEngine(load_policy()), Metrics()
    )
    await upkeep.sync_scheduler(s)
    yield s
    for t in list(s.tasks):
        t.cancel()
    for job in list(sched._jobs):
        await sched.cancel(job)
    s.store.close()


async def _running(sup: Supervisor, tmp_path: Path) -> tuple[RunInfo, Path]:
    """Run r1 on two heard-from nodes (idle processes; the test reports for its ranks),
    and its checkpoint folder."""
    for n in NODES:
        hb = Heartbeat(node=n, ts=time.time(), seq=1, interval_s=1.0)
        await sup.handle(node_topic(n, "heartbeat"), encode(hb))
    ck = tmp_path / "ck"
    spec = RunSpec(
        command=(sys.executable, "-c", "import time; time.sleep(120)"),
        nodes=2,
        checkpoint_dir=str(ck),
        ranks_per_node=1,
    )
    return await ops.add_run(sup, "r1", "local", spec, "tester"), ck


async def _counted(sup: Supervisor, run: RunInfo, step: int) -> None:
    """Until the daemon counted the checkpoint of ``step`` (checked on disk, in a task)."""
    deadline = time.monotonic() + 20
    while run.last_checkpoint_step != step or sup.tasks:
        assert time.monotonic() < deadline, "the checkpoint never counted"
        await asyncio.sleep(0.05)


async def test_the_advice_counts_an_asynchronous_saves_background_write(
    sup: Supervisor, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    run, ck = await _running(sup, tmp_path)
    nodes = list(run.nodes)
    # the ranks' step reports: 1 s steps; step 20 is saved asynchronously, training stops
    # 0.3 s for the copy to host memory and goes on while the write takes 8 s (steps 1.2 s)
    t0 = time.time() - 60.0
    ts = {k: t0 + k for k in range(1, 21)}
    for k in range(21, 31):
        ts[k] = ts[20] + 0.3 + 1.2 * (k - 20)
    for k in range(1, 31):
        for rank, node in enumerate(nodes):
            sample = StepSample(step=k, step_s=1.0 if k <= 20 else 1.2, ts=ts[k])
            report = StepReport(run="r1", attempt=1, rank=rank, node=node, samples=[sample])
            await sup.handle(steps_topic("r1", rank), encode(report))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        fut = dcp.async_save({"w": torch.zeros(64)}, checkpoint_id=str(ck / "step-00000020"))
    await asyncio.wrap_future(fut)  # reported when written, as examples/README.md says
    saved = CheckpointReport(
        run="r1",
        attempt=1,
        rank=0,
        node=nodes[0],
        step=20,
        path=str(ck / "step-00000020"),
        ts=ts[20] + 0.3 + 8.0,
    )
    await sup.handle(node_checkpoint_topic(nodes[0]), encode(saved))
    await _counted(sup, run, 20)
    await sup.store.flush()
    row = await DaemonService(sup).goodput("r1")
    adv = row.advice
    assert adv is not None
    assert adv["persist_s"] == pytest.approx(8.0, abs=0.01)
    # its cost: the 0.3 s stall plus 0.2 s for each of the 6 steps that ended while written
    assert adv["checkpoint_cost_s"] == pytest.approx(0.3 + 6 * 0.2, abs=0.01)
    assert adv["interval_s"] >= 8.0


async def test_a_checkpoint_report_claiming_a_future_time_moves_no_advice(
    sup: Supervisor, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    run, ck = await _running(sup, tmp_path)
    node = next(iter(run.nodes))
    t0 = time.time() - 40.0
    for k in range(1, 31):  # 1 s steps, a synchronous 2 s save at step 20
        ts = t0 + k + (2.0 if k > 20 else 0.0)
        sample = StepSample(step=k, step_s=1.0, ts=ts)
        report = StepReport(run="r1", attempt=1, rank=0, node=node, samples=[sample])
        await sup.handle(steps_topic("r1", 0), encode(report))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.zeros(4)}, checkpoint_id=str(ck / "step-00000020"))
    forged = CheckpointReport(
        run="r1",
        attempt=1,
        rank=0,
        node=node,
        step=20,
        path=str(ck / "step-00000020"),
        ts=time.time() + 86_400.0,  # a day ahead
    )
    await sup.handle(node_checkpoint_topic(node), encode(forged))
    await _counted(sup, run, 20)
    persist, _, _ = sup.goodput.background("r1")
    assert persist < 60.0  # at most the time it took to arrive, never the day it claimed
