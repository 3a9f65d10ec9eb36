"""The agent loop: one probe round, and publishing through the real Mosquitto."""

from __future__ import annotations

import asyncio
import queue
import time
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import Collector, PrivateMosquitto, free_port

from trainwarden.health.agent import Agent, AgentConfig
from trainwarden.health.clock import VirtualClock
from trainwarden.health.probes.base import CheckResult, Fault, Health, Severity
from trainwarden.health.probes.registry import ProbeConfig
from trainwarden.health.report import FaultReport, HealthReport, Heartbeat, NodeStatus


class StaticProbe:
    name = "static"

    def check(self) -> CheckResult:
        return CheckResult("static", Health.HEALTHY, "fine", values={"answer": 42})


class BrokenProbe:
    name = "broken"

    def check(self) -> CheckResult:
        raise RuntimeError("sensor on fire")


class DegradedProbe:
    name = "degraded"

    def check(self) -> CheckResult:
        return CheckResult("degraded", Health.DEGRADED, "slow")


class QueueWatcher:
    """An event source the test feeds by hand (a stand-in for the NVML/kmsg XID watcher)."""

    name = "queue"

    def __init__(self) -> None:
        self.q: queue.Queue[Fault] = queue.Queue()

    def poll(self, timeout_s: float) -> list[Fault]:
        try:
            return [self.q.get(timeout=timeout_s)]
        except queue.Empty:
            return []


def _agent(
    node: str,
    port: int = 1883,
    probes: list[Any] | None = None,
    watchers: list[Any] | None = None,
    **kw: Any,
) -> Agent:
    cfg = AgentConfig(
        node=node,
        broker_port=port,
        report_interval_s=kw.pop("report", 0.3),
        heartbeat_interval_s=kw.pop("heartbeat", 0.1),
        probes=ProbeConfig(timeout_s=1.0),
        **kw,
    )
    return Agent(
        cfg,
        hardware=None,  # type: ignore[arg-type]
        probes=probes if probes is not None else [StaticProbe()],
        watchers=watchers or [],
    )


# --- unit ------------------------------------------------------------------------------


async def test_collect_turns_a_broken_probe_into_data() -> None:
    clock = VirtualClock()
    agent = Agent(
        AgentConfig(node="nid000001"),
        hardware=None,  # type: ignore[arg-type]
        clock=clock,
        probes=[StaticProbe(), BrokenProbe(), DegradedProbe()],
        watchers=[],
    )
    first = await agent.collect()
    second = await agent.collect()
    by_name = {p.probe: p for p in first.probes}
    assert by_name["static"].health is Health.HEALTHY and by_name["static"].values == {"answer": 42}
    assert by_name["broken"].health is Health.UNKNOWN
    assert "sensor on fire" in by_name["broken"].reason
    assert first.overall is Health.DEGRADED
    assert (first.node, first.ts, first.seq, second.seq) == ("nid000001", clock.now(), 0, 1)


def test_config_rejects_bad_names_and_intervals() -> None:
    with pytest.raises(Exception, match="invalid node name"):
        AgentConfig(node="bad name")
    with pytest.raises(ValueError, match="positive"):
        AgentConfig(node="ok", heartbeat_interval_s=0)
    assert AgentConfig(node="nid7").client_id == "tw-agent-nid7"


# --- against the real Mosquitto --------------------------------------------------------


async def _get(col: Collector, pred: Any, within: float = 5.0) -> tuple[float, Any]:
    return await asyncio.to_thread(col.wait_for, pred, within)


@pytest.mark.integration
async def test_publishes_status_reports_heartbeats_and_stops_cleanly(
    node_name: str, collector: Collector
) -> None:
    agent = _agent(node_name)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        _, online = await _get(collector, lambda m: isinstance(m, NodeStatus))
        assert online.state == "online" and online.node == node_name
        _, report = await _get(collector, lambda m: isinstance(m, HealthReport))
        assert report.probes[0].probe == "static" and report.overall is Health.HEALTHY
        _, report2 = await _get(collector, lambda m: isinstance(m, HealthReport))
        assert report2.seq == report.seq + 1
        beats = [(await _get(collector, lambda m: isinstance(m, Heartbeat)))[1] for _ in range(3)]
        assert [b.seq for b in beats] == sorted(b.seq for b in beats)
        assert beats[0].interval_s == pytest.approx(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    _, offline = await _get(collector, lambda m: isinstance(m, NodeStatus))
    assert (offline.state, offline.reason) == ("offline", "agent stopped")


@pytest.mark.integration
async def test_event_fault_is_published_at_once(node_name: str, collector: Collector) -> None:
    watcher = QueueWatcher()
    agent = _agent(node_name, watchers=[watcher], report=30.0, heartbeat=30.0)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await _get(collector, lambda m: isinstance(m, HealthReport))
        t0 = time.monotonic()
        watcher.q.put(
            Fault("xid", Severity.FATAL, "Xid 79: GPU has fallen off the bus", gpu=2, code=79)
        )
        arrived, fault = await _get(collector, lambda m: isinstance(m, FaultReport))
        latency = arrived - t0
        print(f"\nfault latency (watcher -> subscriber): {latency * 1000:.0f} ms")
        assert latency < 1.0
        assert (fault.faults[0].kind, fault.faults[0].code, fault.faults[0].gpu) == ("xid", 79, 2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.mark.integration
async def test_survives_a_broker_restart(private_broker: PrivateMosquitto, node_name: str) -> None:
    port = private_broker.port
    agent = _agent(node_name, port=port, probes=[BrokenProbe()], reconnect_max_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        col = await asyncio.to_thread(Collector, f"trainwarden/v1/node/{node_name}/+", port)
        _, report = await _get(col, lambda m: isinstance(m, HealthReport))
        assert report.probes[0].health is Health.UNKNOWN  # a broken probe is data
        col.close()
        private_broker.stop()
        await asyncio.sleep(1.0)
        assert not task.done(), "the agent must keep trying, not exit"
        private_broker.start()
        col = await asyncio.to_thread(Collector, f"trainwarden/v1/node/{node_name}/+", port)
        # (the "online" of the new connection may precede this subscription)
        await _get(col, lambda m: isinstance(m, Heartbeat), within=10)
        _, report = await _get(col, lambda m: isinstance(m, HealthReport), within=10)
        assert agent.connections >= 2
        col.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.mark.integration
async def test_stop_while_broker_is_away_returns_promptly(node_name: str, tmp_path: Path) -> None:
    agent = _agent(node_name, port=free_port())
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(0.5)
    assert agent.connections == 0 and not task.done()
    stop.set()
    await asyncio.wait_for(task, 3)


class LongNameProbe:
    """A probe whose name and reason are too long for the schema (a deep storage path)."""

    name = "storage:/" + "very-long-directory/" * 10

    def check(self) -> CheckResult:
        return CheckResult(
            self.name,
            Health.DEGRADED,
            "x" * 5000,
            faults=(Fault("storage-slow", Severity.DEGRADED, "y" * 3000),),
        )


async def test_oversized_result_is_trimmed_not_fatal() -> None:
    agent = Agent(
        AgentConfig(node="nid000002"),
        hardware=None,  # type: ignore[arg-type]
        clock=VirtualClock(),
        probes=[LongNameProbe(), StaticProbe()],
        watchers=[],
    )
    report = await agent.collect()
    long, static = report.probes
    assert long.probe.startswith("storage:/very-long-directory/") and len(long.probe) <= 64
    assert long.health is Health.DEGRADED and len(long.reason) == 2000
    assert long.faults[0].kind == "storage-slow"
    assert static.values == {"answer": 42}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("login01", ("login01", 1883)),
        ("[::1]:8883", ("::1", 8883)),
        (" broker.alps:1884 ", ("broker.alps", 1884)),
    ],
)
def test_parse_broker(spec: str, expected: tuple[str, int]) -> None:
    from trainwarden.health.mqtt import parse_broker

    assert parse_broker(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        (":1883", "no host"),
        ("h:x", "not a number"),
        ("h:70000", "out of range"),
        ("[::1", "unclosed"),
    ],
)
def test_parse_broker_rejects(spec: str, message: str) -> None:
    from trainwarden.health.errors import HealthError
    from trainwarden.health.mqtt import parse_broker

    with pytest.raises(HealthError, match=message):
        parse_broker(spec)
