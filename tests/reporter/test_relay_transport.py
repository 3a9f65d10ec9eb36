"""The reporter's relay transport: datagrams to the node agent's socket, never blocking.

Real Unix datagram sockets stand in for the agent (a reader thread, a bound socket that
nobody reads, a stale file, no file at all); the control path uses the real Mosquitto.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from trainwarden.health.mqtt import short_hostname
from trainwarden.health.report import (
    MAX_RELAY_DATAGRAM_BYTES,
    CheckpointReport,
    ControlMessage,
    StepReport,
    control_topic,
    encode,
    parse_relayed,
)
from trainwarden.health.reporter import Reporter, relay_from_env

BROKER = "127.0.0.1:1883"
NODE = "nid042"


class FakeAgent:
    """A bound datagram socket read by a thread: what a rank sent, parsed as the agent does."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.sizes: list[int] = []
        self.msgs: list[StepReport | CheckpointReport] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._halt.is_set():
            try:
                data = self.sock.recv(MAX_RELAY_DATAGRAM_BYTES + 1)
            except TimeoutError:
                continue
            self.sizes.append(len(data))
            self.msgs.append(parse_relayed(data, NODE))

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.msgs) < count:
            assert time.monotonic() < deadline, f"{len(self.msgs)} of {count} datagrams came"
            time.sleep(0.01)

    def close(self) -> None:
        self._halt.set()
        self._thread.join(2)
        self.sock.close()


def _hammer(rep: Reporter, n: int = 20_000) -> tuple[float, float]:
    """``n`` steps as fast as a training loop could: (mean, worst) seconds per call."""
    worst = 0.0
    t0 = time.perf_counter()
    for step in range(n):
        s = time.perf_counter()
        rep.step_done(step, step_s=0.1)
        worst = max(worst, time.perf_counter() - s)
    return (time.perf_counter() - t0) / n, worst


@pytest.mark.parametrize("agent", ["no-socket", "stale-socket", "queue-full"])
def test_an_absent_agent_never_blocks_step_done(agent: str, tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    held: socket.socket | None = None
    if agent == "stale-socket":  # the agent was killed: the file stays, nobody listens
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
            dead.bind(str(path))
    elif agent == "queue-full":  # the agent is alive but stuck: nothing reads its queue
        held = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        held.bind(str(path))
    rep = Reporter(None, "r1", 0, 0, NODE, relay=str(path), flush_interval_s=0.01)
    try:
        assert rep.enabled and rep.connected is False
        mean, worst = 0.0, 0.0
        for _ in range(5):  # a few flushes' worth, so the flusher meets the dead socket
            m, w = _hammer(rep, 4_000)
            mean, worst = max(mean, m), max(worst, w)
            time.sleep(0.05)
        rep.checkpoint_saved(7, "/ck/7")
        t1 = time.monotonic()
        rep.close(timeout_s=3)
        close_s = time.monotonic() - t1
    finally:
        if held is not None:
            held.close()
    print(
        f"\nrelay {agent}: step_done mean {mean * 1e6:.2f} us, worst {worst * 1e6:.0f} us, "
        f"close {close_s:.3f} s, sent {rep.stats.steps_sent}, dropped {rep.stats.steps_dropped}"
    )
    assert mean < 100e-6, f"step_done costs {mean * 1e6:.1f} us on average"
    assert close_s < 3.5
    assert rep.stats.relay_errors > 0 and rep.stats.steps_dropped > 0
    # every step offered is either sent or dropped (over the bound, or not taken)
    assert rep.stats.steps_sent + rep.stats.steps_dropped == 5 * 4_000
    if agent != "queue-full":
        assert rep.stats.steps_sent == 0
        assert rep.stats.checkpoints_dropped == 1 and rep.stats.checkpoints_sent == 0


def test_a_batch_too_big_for_one_datagram_is_split(tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path / "agent.sock")
    rep = Reporter(None, "r1", 1, 5, NODE, relay=agent.path, flush_interval_s=60.0)
    try:
        rep.step_done(0)
        agent.wait_for(1)  # the first step goes at once
        for step in range(1, 5001):  # ~280 KB of samples in one flush
            rep.step_done(step, step_s=0.25)
        rep.checkpoint_saved(5000, "/ck/5000")
        rep.close(timeout_s=5)
        agent.wait_for(3)
        time.sleep(0.2)
    finally:
        agent.close()
    steps = [m for m in agent.msgs if isinstance(m, StepReport)]
    ckpts = [m for m in agent.msgs if isinstance(m, CheckpointReport)]
    assert len(steps) >= 5, "5,000 samples cannot fit one datagram"
    assert max(agent.sizes) <= MAX_RELAY_DATAGRAM_BYTES
    assert [s.step for m in steps for s in m.samples] == list(range(5001))
    assert {(m.run, m.attempt, m.rank, m.node) for m in steps} == {("r1", 1, 5, NODE)}
    assert [(c.step, c.path) for c in ckpts] == [(5000, "/ck/5000")]
    assert rep.stats.steps_sent == 5001 and rep.stats.steps_dropped == 0
    assert rep.stats.checkpoints_sent == 1


def test_relay_is_chosen_from_the_environment(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.sock")
    assert relay_from_env({"TRAINWARDEN_RELAY": path}) == path
    assert relay_from_env({"TRAINWARDEN_RELAY": "off"}) is None
    # automatic only for ranks that report under this host's name (a simulated node
    # would have its reports rejected by the real node's agent)
    assert relay_from_env({}, node=f"{short_hostname()}-sim") is None
    # with a relay, only local rank 0 opens an MQTT connection, and only for control
    base = {"TRAINWARDEN_RELAY": path, "TRAINWARDEN_BROKER": "127.0.0.1:9", "RANK": "3"}
    quiet = Reporter.from_env({**base, "LOCAL_RANK": "1"})
    listener = Reporter.from_env({**base, "SLURM_LOCALID": "0"})
    no_broker = Reporter.from_env({"TRAINWARDEN_RELAY": path})
    try:
        assert quiet.relay == path and quiet._client is None
        assert listener.relay == path and listener._client is not None
        assert no_broker.enabled and no_broker._client is None
    finally:
        for r in (quiet, listener, no_broker):
            r.close(timeout_s=1)


@pytest.mark.integration
def test_local_rank_0_hears_control_over_mqtt_and_reports_through_the_relay(
    tmp_path: Path, run_name: str, collector: Any
) -> None:
    agent = FakeAgent(tmp_path / "agent.sock")
    rep = Reporter(BROKER, run_name, 0, 0, NODE, relay=agent.path, flush_interval_s=0.1)
    try:
        assert rep.wait_connected(5)
        time.sleep(0.2)  # let the SUBACK land
        rep.step_done(0)
        rep.step_done(1)
        agent.wait_for(1)
        msg = ControlMessage(run=run_name, command="checkpoint-now", request_id="q1", ts=1.0)
        collector.publish(control_topic(run_name), encode(msg))
        deadline = time.monotonic() + 3
        while not rep.checkpoint_requested():
            assert time.monotonic() < deadline, "control message never reached the reporter"
            time.sleep(0.02)
        on_bus = collector.drain(0.3)
    finally:
        rep.close()
        agent.close()
    assert not [m for m in on_bus if isinstance(m, StepReport)], "steps went to the broker"
    assert [s.step for m in agent.msgs if isinstance(m, StepReport) for s in m.samples] == [0, 1]
