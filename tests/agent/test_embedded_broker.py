"""The embedded (amqtt) broker: a free port, the agent's traffic, and last wills."""

from __future__ import annotations

import asyncio
import socket
import struct

import aiomqtt
import pytest
from agent_helpers import free_port

from trainwarden.health.agent import Agent, AgentConfig
from trainwarden.health.probes.base import CheckResult, Health
from trainwarden.health.probes.registry import ProbeConfig
from trainwarden.health.report import (
    HealthReport,
    Heartbeat,
    NodeStatus,
    encode,
    node_topic,
    parse_message,
)
from trainwarden.supervisor.daemon.broker import EmbeddedBroker
from trainwarden.supervisor.errors import SupervisorError

pytest.importorskip("amqtt")


class OkProbe:
    name = "ok"

    def check(self) -> CheckResult:
        return CheckResult("ok", Health.HEALTHY, "fine")


def _mqtt_str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def _connect_with_will(port: int, client_id: str, topic: str, payload: bytes) -> socket.socket:
    """A bare MQTT 3.1.1 CONNECT with a QoS 1 will, so the test can drop the socket rudely."""
    var = _mqtt_str("MQTT") + bytes([4, 0x02 | 0x04 | 0x08]) + struct.pack("!H", 60)
    body = var + _mqtt_str(client_id) + _mqtt_str(topic) + _mqtt_str(payload)
    length, n = b"", len(body)
    while True:  # MQTT variable-length "remaining length"
        n, digit = divmod(n, 128)
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            break
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"\x10" + length + body)
    connack = sock.recv(4)
    assert connack[:1] == b"\x20" and connack[3:4] == b"\x00", f"CONNACK refused: {connack!r}"
    return sock


async def test_picks_a_free_port_and_reports_it() -> None:
    async with EmbeddedBroker(port=0) as broker:
        assert broker.port > 0 and broker.address == f"127.0.0.1:{broker.port}"
        with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
            pass
    with pytest.raises(SupervisorError, match="not running"):
        _ = broker.port


async def test_busy_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(SupervisorError, match="could not listen"):
            async with EmbeddedBroker(port=s.getsockname()[1]):
                pass


@pytest.mark.integration  # sleeps 0.2 s on the wall clock before dropping the socket
async def test_will_is_published_when_a_client_drops_its_socket() -> None:
    async with EmbeddedBroker() as broker:
        topic = node_topic("nid-will", "status")
        will = encode(NodeStatus(node="nid-will", state="offline", reason="connection lost"))
        async with aiomqtt.Client("127.0.0.1", broker.port, timeout=5) as sub:
            await sub.subscribe(topic, qos=1)
            sock = await asyncio.to_thread(
                _connect_with_will, broker.port, "tw-agent-nid-will", topic, will
            )
            await asyncio.sleep(0.2)
            sock.close()  # no DISCONNECT: the broker must publish the will
            async with asyncio.timeout(5):
                msg = await anext(aiter(sub.messages))
        status = parse_message(str(msg.topic), bytes(msg.payload))  # type: ignore[arg-type]
        assert isinstance(status, NodeStatus)
        assert (status.state, status.reason) == ("offline", "connection lost")


async def test_agent_traffic_flows_through_it() -> None:
    async with EmbeddedBroker(port=free_port()) as broker:
        cfg = AgentConfig(
            node="nid-emb",
            broker_port=broker.port,
            report_interval_s=0.2,
            heartbeat_interval_s=0.1,
            probes=ProbeConfig(timeout_s=1),
        )
        agent = Agent(cfg, hardware=None, probes=[OkProbe()], watchers=[])  # type: ignore[arg-type]
        seen: set[type] = set()
        async with aiomqtt.Client("127.0.0.1", broker.port, timeout=5) as sub:
            await sub.subscribe("trainwarden/v1/node/nid-emb/+", qos=1)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                async with asyncio.timeout(5):
                    async for msg in sub.messages:
                        m = parse_message(str(msg.topic), bytes(msg.payload))  # type: ignore[arg-type]
                        seen.add(type(m))
                        if {HealthReport, Heartbeat, NodeStatus} <= seen:
                            break
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
        assert {HealthReport, Heartbeat, NodeStatus} <= seen
