"""The daemon's own OperatorService behind the operator's views (issue #13 item 7): a node
in detail with when its drain took effect, events read forward, and what a fault led to --
on the real parts: SQLite store, the shipped policy, the local scheduler."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from trainwarden.health.clock import SystemClock
from trainwarden.health.probes.base import Severity
from trainwarden.health.report import FaultModel, FaultReport, Heartbeat, encode, node_topic
from trainwarden.policies.engine import PolicyEngine
from trainwarden.policies.model import ActionKind, EventKind
from trainwarden.policies.rules import load_policy
from trainwarden.supervisor.api.service import DaemonService
from trainwarden.supervisor.daemon import upkeep
from trainwarden.supervisor.daemon.context import CoreConfig
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.persist import AsyncStore
from trainwarden.supervisor.daemon.supervisor import Supervisor
from trainwarden.supervisor.errors import NotFoundError
from trainwarden.supervisor.model.lifecycle import NodePhase
from trainwarden.supervisor.scheduler.local import LocalScheduler
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store

NODES = ["n1", "n2", "n3", "n4"]


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    sched = LocalScheduler(NODES, tmp_path / "logs", stop_grace_s=3.0)
    s = Supervisor(
        CoreConfig(will_confirm_s=0.5, settle_s=0.2),
        SystemClock(),
        AsyncStore(open_store(url)),
        sched,
        PolicyEngine(load_policy()),
        Metrics(),
    )
    await upkeep.sync_scheduler(s)  # the roster of nodes, as the daemon reads it at start
    yield s
    for t in list(s.tasks):
        t.cancel()
    s.store.close()


async def until(pred: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def beat(sup: Supervisor, *nodes: str) -> None:
    for n in nodes:
        hb = Heartbeat(node=n, ts=time.time(), seq=1, interval_s=1.0)
        await sup.handle(node_topic(n, "heartbeat"), encode(hb))


def xid(node: str) -> FaultReport:
    fault = FaultModel(
        kind="xid", severity=Severity.FATAL, detail="GPU has fallen off the bus", gpu=0, code=79
    )
    return FaultReport(node=node, ts=time.time(), faults=[fault])


async def test_a_fault_shows_on_its_node_and_explains_the_drain_it_led_to(
    sup: Supervisor,
) -> None:
    svc = DaemonService(sup)
    await beat(sup, *NODES)
    await sup.handle(node_topic("n3", "fault"), encode(xid("n3")))
    await until(lambda: sup.state.nodes["n3"].phase is NodePhase.DRAINED)
    await until(lambda: not sup.tasks)
    st = sup.store.store
    fault = st.events(node="n3", kinds=[EventKind.FAULT])[0]
    drain = next(a for a in st.actions(node="n3") if a.kind is ActionKind.DRAIN)
    assert drain.status == "succeeded" and drain.finished_at is not None

    node = await svc.node_detail("n3")
    assert (node.state, node.drained_by) == ("drained", "trainwarden")
    assert node.drained_at == drain.finished_at
    assert node.last_heartbeat_at is not None
    assert "GpuFatal" in node.conditions
    cond = next(c for c in node.condition_details if c.type == "GpuFatal")
    assert "XID 79" in cond.reason and fault.id in cond.evidence and cond.since >= fault.ts - 1
    ids = [e.id for e in node.events]
    assert fault.id in ids and ids == sorted(ids)  # oldest first
    assert [a.id for a in node.actions] == sorted(a.id for a in node.actions)
    assert drain.id in [a.id for a in node.actions]
    listed = {n.name: n for n in await svc.list_nodes()}
    assert listed["n3"].drained_at == drain.finished_at and listed["n1"].drained_at is None

    why = await svc.explain(fault.id, "event")
    assert drain.id in [a.id for a in why.followed]
    led = next(line for line in why.lines if f"led to: action {drain.id} drain" in line)
    assert "succeeded" in led and "n3 drained" in led
    quiet = await svc.explain(st.events(node="n1")[0].id, "event")
    assert quiet.followed == [] and "  led to: no action" in quiet.lines

    with pytest.raises(NotFoundError, match="unknown node 'n9'"):
        await svc.node_detail("n9")


async def test_an_operator_drain_and_an_outside_one_have_their_times(sup: Supervisor) -> None:
    svc = DaemonService(sup)
    await beat(sup, *NODES)
    row = await svc.drain("n2", "bad fan", "alice")
    finished = sup.store.store.action(row.id)
    assert finished is not None and finished.finished_at is not None
    node = await svc.node_detail("n2")
    assert (node.drained_by, node.drained_at) == ("operator", finished.finished_at)
    assert "bad fan" in (node.drain_reason or "")
    # drained in the scheduler by someone else: the time the daemon first saw it
    before = time.time()
    await sup.scheduler.drain("n4", "maintenance window")
    await upkeep.sync_scheduler(sup)
    outside = {n.name: n for n in await svc.list_nodes()}["n4"]
    assert outside.drained_by == "external" and outside.drain_reason == "maintenance window"
    assert outside.drained_at is not None and outside.drained_at >= before - 1
    # returned: no drain time any more
    await svc.undrain("n2", "fan replaced", "alice")
    assert (await svc.node_detail("n2")).drained_at is None


async def test_events_read_forward_oldest_first(sup: Supervisor) -> None:
    svc = DaemonService(sup)
    await beat(sup, *NODES)
    for n in NODES:
        await svc.drain(n, "test", "alice")
    newest = await svc.list_events(limit=3, node=None, run=None, kind=None, since_id=None)
    ids = [e.id for e in newest]
    assert ids == sorted(ids, reverse=True)
    first = ids[-1] - 1
    forward = await svc.list_events(
        limit=2, node=None, run=None, kind=None, since_id=first, oldest_first=True
    )
    assert [e.id for e in forward] == [first + 1, first + 2]
