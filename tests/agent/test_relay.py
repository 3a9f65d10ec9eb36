"""The agent's relay: ranks' step reports over a local datagram socket, out as NodeSteps.

Real Unix sockets, real Reporter threads, a private Mosquitto (and a real agent process
for the restart case); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import Collector, PrivateMosquitto

from trainwarden.health.agent import Agent, AgentConfig
from trainwarden.health.errors import ReportError
from trainwarden.health.probes.registry import ProbeConfig
from trainwarden.health.report import (
    MAX_PAYLOAD_BYTES,
    CheckpointReport,
    NodeSteps,
    StepReport,
    StepSample,
    checkpoint_topic,
    encode,
    node_checkpoint_topic,
    node_steps_topic,
    parse_message,
    parse_relayed,
    steps_topic,
)
from trainwarden.health.reporter import Reporter
from trainwarden.health.sim.hardware import SimulatedHardware

TRAINWARDEN = [sys.executable, "-m", "trainwarden.cli"]


class StaticProbe:
    name = "static"

    def check(self) -> Any:
        from trainwarden.health.probes.base import CheckResult, Health

        return CheckResult("static", Health.HEALTHY, "fine")


def _agent(node: str, port: int, relay: Path | None, **kw: Any) -> Agent:
    cfg = AgentConfig(
        node=node,
        broker_port=port,
        report_interval_s=60.0,
        heartbeat_interval_s=60.0,
        probes=ProbeConfig(timeout_s=1.0),
        relay_path=str(relay) if relay is not None else None,
        **kw,
    )
    return Agent(cfg, hardware=None, probes=[StaticProbe()], watchers=[])  # type: ignore[arg-type]


def _report(node: str, rank: int = 0, steps: range = range(1), run: str = "r1") -> StepReport:
    return StepReport(
        run=run,
        attempt=0,
        rank=rank,
        node=node,
        samples=[StepSample(step=s, step_s=0.5, ts=1.0) for s in steps],
    )


async def _get(col: Collector, pred: Any, within: float = 5.0) -> tuple[float, Any]:
    return await asyncio.to_thread(col.wait_for, pred, within)


async def _drain(col: Collector, quiet_s: float) -> list[Any]:
    def drain() -> list[Any]:
        out = []
        while True:
            try:
                out.append(col.q.get(timeout=quiet_s)[2])
            except Exception:
                return out

    return await asyncio.to_thread(drain)


@pytest.fixture
async def running(
    private_broker: PrivateMosquitto, node_name: str, tmp_path: Path
) -> AsyncIterator[tuple[Agent, Collector, Path]]:
    """An agent with a relay on a private broker, and a subscriber to everything on it."""
    sock = tmp_path / "relay" / "agent.sock"
    col = await asyncio.to_thread(Collector, "trainwarden/v1/#", private_broker.port)
    agent = _agent(node_name, private_broker.port, sock, relay_flush_interval_s=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        assert await asyncio.to_thread(agent.relay_bound.wait, 5)
        await _get(col, lambda m: getattr(m, "kind", None) == "status")
        yield agent, col, sock
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        col.close()
    assert not sock.exists(), "the agent removes its socket when it stops"


# --- through the relay, end to end ----------------------------------------------------


@pytest.mark.integration
async def test_two_ranks_are_batched_into_one_node_steps_per_flush(
    running: tuple[Agent, Collector, Path], node_name: str
) -> None:
    agent, col, sock = running
    assert oct(os.stat(sock).st_mode & 0o777) == "0o666"
    ranks = [
        Reporter(None, "r1", 2, rank, node_name, relay=str(sock), flush_interval_s=0.1)
        for rank in (0, 1)
    ]
    try:
        t0 = time.monotonic()
        for r in ranks:
            r.step_done(0, step_s=1.0)
        # each rank's first report of the attempt is flushed at once, not after 1 s
        seen: set[int] = set()
        while seen != {0, 1}:
            at, msg = await _get(col, lambda m: isinstance(m, NodeSteps))
            assert at - t0 < 0.7, f"a first step waited {at - t0:.2f} s in the relay"
            seen |= {rep.rank for rep in msg.reports}
        # then 2 s of steady steps: each rank sends ~20 datagrams, the agent ~2 messages
        for step in range(1, 21):
            for r in ranks:
                r.step_done(step, step_s=0.1)
            await asyncio.sleep(0.1)
        msgs = await _drain(col, quiet_s=1.5)
    finally:
        for r in ranks:
            r.close()
    batches = [m for m in msgs if isinstance(m, NodeSteps)]
    assert not [m for m in msgs if isinstance(m, StepReport)], "no rank published itself"
    assert 1 <= len(batches) <= 4, f"{len(batches)} NodeSteps for 2 s at a 1 s flush"
    for b in batches:
        assert b.node == node_name and all(rep.node == node_name for rep in b.reports)
    for rank, rep in enumerate(ranks):
        steps = [s.step for b in batches for x in b.reports if x.rank == rank for s in x.samples]
        assert steps == list(range(1, 21)), f"rank {rank}: every step once, in order"
        assert rep.stats.steps_dropped == 0 and rep.stats.batches_sent >= 5
        assert rep.connected is False  # no broker connection at all
    assert agent.relay_stats.steps_received == agent.relay_stats.steps_published
    assert agent.relay_stats.rejected == 0 and agent.relay_stats.steps_dropped == 0


@pytest.mark.integration
async def test_checkpoint_is_forwarded_at_once_on_the_nodes_own_topic(
    running: tuple[Agent, Collector, Path], node_name: str
) -> None:
    agent, col, sock = running

    def next_checkpoint() -> tuple[float, str, Any]:
        while True:
            at, topic, msg = col.q.get(timeout=5.0)
            if isinstance(msg, CheckpointReport):
                return at, topic, msg

    rep = Reporter(None, "r-ck", 0, 3, node_name, relay=str(sock), flush_interval_s=30.0)
    try:
        t0 = time.monotonic()
        rep.checkpoint_saved(40, "/ckpt/step-40")
        at, topic, msg = await asyncio.to_thread(next_checkpoint)
    finally:
        rep.close()
    assert at - t0 < 0.5, f"checkpoint took {at - t0:.2f} s through the relay"
    assert (msg.run, msg.rank, msg.node, msg.step) == ("r-ck", 3, node_name, 40)
    # under the node's broker identity, which the shipped ACL ties to its credentials
    assert topic == node_checkpoint_topic(node_name)
    assert rep.stats.checkpoints_sent == 1
    for _ in range(50):  # counted once the broker's PUBACK is in, which may trail delivery
        if agent.relay_stats.checkpoints_published:
            break
        await asyncio.sleep(0.02)
    assert agent.relay_stats.checkpoints_published == 1


@pytest.mark.integration
async def test_bad_datagrams_are_rejected_counted_and_the_next_is_handled(
    running: tuple[Agent, Collector, Path], node_name: str
) -> None:
    agent, col, sock = running
    bad = [
        b"\xff\x00 not json",
        b"[1, 2, 3]",
        json.dumps({"v": 1, "kind": "heartbeat", "node": node_name}).encode(),  # not relayable
        encode(_report("some-other-node")),
        encode(_report(node_name)).replace(b'"step":0', b'"step":-1'),
        b"{" + b" " * (70 * 1024) + b"}",  # over the datagram limit
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for payload in bad:
            s.sendto(payload, str(sock))
        s.sendto(encode(_report(node_name, rank=9, steps=range(5, 7))), str(sock))
    _, msg = await _get(col, lambda m: isinstance(m, NodeSteps))
    assert [(r.rank, [x.step for x in r.samples]) for r in msg.reports] == [(9, [5, 6])]
    st = agent.relay_stats
    assert st.datagrams == len(bad) + 1 and st.rejected == len(bad)
    assert st.rejected_by == {"invalid": 4, "wrong-node": 1, "oversized": 1}


@pytest.mark.integration
def test_agent_process_relays_and_a_dead_agent_never_blocks_a_rank(
    private_broker: PrivateMosquitto, node_name: str, tmp_path: Path
) -> None:
    """``trainwarden agent --relay``; SIGKILL leaves a stale socket: the rank drops and
    counts; a new agent takes the stale path over and the same rank's reports flow again."""
    state = tmp_path / "node"
    SimulatedHardware(node_name, gpus=1, state_dir=state)
    sock = tmp_path / "agent.sock"
    argv = [
        *TRAINWARDEN,
        "agent",
        "--node",
        node_name,
        "--broker",
        f"127.0.0.1:{private_broker.port}",
        "--interval",
        "30",
        "--simulated-hardware",
        str(state),
        "--relay",
        str(sock),
        "--relay-mode",
        "660",
        "--relay-flush",
        "0.5",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    col = Collector(node_steps_topic(node_name), private_broker.port)
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)]
    rank = Reporter.from_env(
        {
            "TRAINWARDEN_RELAY": str(sock),
            "TRAINWARDEN_RUN": "r-proc",
            "TRAINWARDEN_NODE": node_name,
            "RANK": "4",
            "LOCAL_RANK": "1",
        },
        flush_interval_s=0.1,
    )
    try:
        assert rank.relay == str(sock) and rank.enabled
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert time.monotonic() < deadline, "the agent never bound its relay socket"
            time.sleep(0.05)
        assert oct(sock.stat().st_mode & 0o777) == "0o660"
        rank.step_done(0)
        _, msg = col.wait_for(lambda m: isinstance(m, NodeSteps), timeout=10)
        assert msg.reports[0].rank == 4

        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        assert sock.exists()  # stale: nobody listens
        sent_before = rank.stats.steps_sent
        worst = 0.0
        for step in range(1, 2001):
            t = time.perf_counter()
            rank.step_done(step, step_s=0.01)
            worst = max(worst, time.perf_counter() - t)
        time.sleep(0.5)
        assert worst < 0.25, f"step_done took {worst * 1e3:.1f} ms with the agent dead"
        assert rank.stats.steps_sent == sent_before and rank.stats.steps_dropped > 0
        assert rank.stats.relay_errors > 0

        procs.append(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        )
        deadline = time.monotonic() + 20
        while True:  # until the new agent listens on the old path
            rank.step_done(5000, step_s=0.01)
            try:
                _, msg = col.wait_for(lambda m: isinstance(m, NodeSteps), timeout=0.5)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "the restarted agent never relayed"
        assert msg.reports[0].samples[-1].step == 5000
    finally:
        rank.close()
        col.close()
        for p in procs:
            p.kill()
            out, _ = p.communicate(timeout=10)
            print(out.decode(errors="replace")[-2000:])


# --- the queue and the message bounds, no broker --------------------------------------


def test_queue_overflow_is_dropped_and_counted(node_name: str) -> None:
    agent = _agent(node_name, 1, None, relay_queue_max=3)
    taken = [agent.relay_datagram(encode(_report(node_name, rank=r))) for r in range(5)]
    assert taken == [True, True, True, False, False]
    assert agent.relay_stats.steps_received == 3 and agent.relay_stats.steps_dropped == 2
    # a checkpoint has its own queue: a full step queue does not hold it back
    ckpt = CheckpointReport(
        run="r1", attempt=0, rank=0, node=node_name, step=1, path="/ck/1", ts=1.0
    )
    assert agent.relay_datagram(encode(ckpt)) is True


class FakeClient:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, **_: Any) -> None:
        self.published.append((topic, payload))


async def test_node_steps_stay_within_the_broker_payload_limit(node_name: str) -> None:
    agent = _agent(node_name, 1, None, relay_queue_max=10_000)
    # 300 ranks x 300 samples (~16 KB each, ~5 MB in all): many messages, none too big
    for rank in range(300):
        assert agent.relay_datagram(encode(_report(node_name, rank=rank, steps=range(300))))
    client = FakeClient()
    await agent._relay_publish(client)  # type: ignore[arg-type]
    assert len(client.published) >= 15
    ranks = []
    for topic, payload in client.published:
        assert topic == node_steps_topic(node_name)
        assert len(payload) <= MAX_PAYLOAD_BYTES
        msg = parse_message(topic, payload)
        assert isinstance(msg, NodeSteps)
        ranks += [r.rank for r in msg.reports]
    assert ranks == list(range(300))
    assert agent.relay_stats.steps_published == 300 and agent._relay_bytes == 0


# --- the wire format ------------------------------------------------------------------


def test_parse_message_checks_node_steps_topic_and_nodes() -> None:
    good = NodeSteps(node="n1", ts=1.0, reports=[_report("n1", 0), _report("n1", 1)])
    msg = parse_message(node_steps_topic("n1"), encode(good))
    assert isinstance(msg, NodeSteps) and [r.rank for r in msg.reports] == [0, 1]
    with pytest.raises(ReportError, match="claims node"):
        parse_message(node_steps_topic("n2"), encode(good))
    with pytest.raises(ReportError, match="does not belong on topic"):
        parse_message("trainwarden/v1/node/n1/health", encode(good))
    with pytest.raises(ReportError, match="does not belong on topic"):
        parse_message(steps_topic("r1", 0), encode(good))
    foreign = json.loads(encode(good))
    foreign["reports"][1]["node"] = "n9"
    with pytest.raises(ReportError, match="relays only its own ranks"):
        parse_message(node_steps_topic("n1"), json.dumps(foreign).encode())
    empty = {**json.loads(encode(good)), "reports": []}
    with pytest.raises(ReportError, match="invalid node-steps"):
        parse_message(node_steps_topic("n1"), json.dumps(empty).encode())


def test_parse_relayed_takes_steps_and_checkpoints_of_this_node_only() -> None:
    assert isinstance(parse_relayed(encode(_report("n1")), "n1"), StepReport)
    ckpt = CheckpointReport(run="r", attempt=0, rank=0, node="n1", step=1, path="/c", ts=1.0)
    assert isinstance(parse_relayed(encode(ckpt), "n1"), CheckpointReport)
    assert checkpoint_topic("r") == "trainwarden/v1/run/r/checkpoint"
    with pytest.raises(ReportError, match="claims node"):
        parse_relayed(encode(_report("n2")), "n1")
    with pytest.raises(ReportError, match="unknown kind"):
        parse_relayed(encode(NodeSteps(node="n1", ts=1.0, reports=[_report("n1")])), "n1")
    with pytest.raises(ReportError, match="-byte limit"):
        parse_relayed(b" " * (64 * 1024 + 1), "n1")


async def test_an_oversized_message_is_refused_before_the_broker_sees_it(node_name: str) -> None:
    """The broker disconnects a client whose packet is over its limit, and that publishes
    the node's last will: the agent refuses such a message itself and carries on."""
    agent = _agent(node_name, 1, None)
    payload = b"x" * (MAX_PAYLOAD_BYTES + 1)
    # no client is needed: the message never reaches one
    await agent._publish_on(None, f"trainwarden/v1/node/{node_name}/health", payload)  # type: ignore[arg-type]
    assert agent.oversized == 1


@pytest.mark.integration
async def test_a_checkpoint_request_reaches_ranks_that_only_use_the_relay(
    running: tuple[Agent, Collector, Path], node_name: str, private_broker: PrivateMosquitto
) -> None:
    """Ranks behind the relay hold no broker credentials: the agent passes the daemon's
    checkpoint-now on to them (a file beside its socket), once per request."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from trainwarden.health.control import control_dir, write_request
    from trainwarden.health.report import ControlMessage, control_topic

    agent, _col, sock = running
    # a request left from an earlier attempt is not taken by a rank that starts now
    old = ControlMessage(run="r-ctl", command="checkpoint-now", request_id="old", ts=1.0)
    write_request(control_dir(sock), old)
    rep = Reporter(None, "r-ctl", 1, 0, node_name, relay=str(sock), flush_interval_s=30.0)
    daemon = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-daemon-control")
    daemon.connect("127.0.0.1", private_broker.port)
    daemon.loop_start()
    try:
        assert rep.checkpoint_requested() is False
        new = ControlMessage(run="r-ctl", command="checkpoint-now", request_id="req-1", ts=2.0)
        for _ in range(100):  # the agent subscribes once its session is up
            daemon.publish(control_topic("r-ctl"), encode(new), qos=1).wait_for_publish(5)
            await asyncio.sleep(0.05)
            if agent.controls_forwarded:
                break
        assert agent.controls_forwarded >= 1
        assert rep.checkpoint_requested() is True
        assert rep.checkpoint_requested() is False  # once per request
        other = Reporter(None, "other-run", 1, 0, node_name, relay=str(sock))
        assert other.checkpoint_requested() is False  # another run's ranks are not asked
        other.close()
    finally:
        daemon.loop_stop()
        daemon.disconnect()
        rep.close()
