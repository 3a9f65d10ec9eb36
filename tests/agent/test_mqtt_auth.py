"""A broker that refuses anonymous clients: the agent and the reporter log in with a
user name and a password file; without them nothing gets through. Then the agent against
the shipped broker config (tests/infra/secure_broker.py): TLS with its password or its
client certificate, and an agent another node cannot push off the broker."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from agent_helpers import PrivateMosquitto
from paho.mqtt.enums import CallbackAPIVersion

from trainwarden.health.agent import Agent, AgentConfig
from trainwarden.health.errors import HealthError
from trainwarden.health.mqtt import MqttAuth
from trainwarden.health.probes.registry import ProbeConfig
from trainwarden.health.report import Heartbeat, NodeStatus, StepReport, parse_message
from trainwarden.health.reporter import Reporter
from trainwarden.health.sim.hardware import SimulatedHardware

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))
from secure_broker import DAEMON, Peer, SecureBroker, skip_without_tools

pytestmark = pytest.mark.integration


@pytest.fixture
def secured(tmp_path: Path) -> tuple[PrivateMosquitto, Path]:
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "node7", "s3cret"], check=True)
    broker = PrivateMosquitto(tmp_path)
    broker.conf.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {pw}\npersistence false\nuser root\n"
    )
    (tmp_path / "node7.pw").write_text("s3cret\n")
    broker.start()
    yield broker, tmp_path / "node7.pw"
    broker.stop()


def watch(port: int) -> tuple[mqtt.Client, list[object]]:
    seen: list[object] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
    c.username_pw_set("node7", "s3cret")
    c.on_connect = lambda cl, *_: cl.subscribe("trainwarden/v1/#", qos=1)
    c.on_message = lambda _c, _u, m: seen.append(parse_message(m.topic, m.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, seen


async def run_agent(port: int, auth: MqttAuth, tmp: Path, seconds: float) -> None:
    cfg = AgentConfig(
        node="node7",
        broker_port=port,
        heartbeat_interval_s=0.2,
        report_interval_s=5,
        probes=ProbeConfig(storage_paths=(str(tmp),)),
        auth=auth,
        reconnect_max_s=0.5,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        Agent(cfg, SimulatedHardware("node7", state_dir=tmp / "hw")).run(stop)
    )
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_agent_logs_in_with_a_password_file(
    secured: tuple[PrivateMosquitto, Path], tmp_path: Path
) -> None:
    broker, pwfile = secured
    client, seen = watch(broker.port)
    try:
        await run_agent(broker.port, MqttAuth(username="x"), tmp_path, 1.5)  # wrong user
        assert not any(isinstance(m, Heartbeat) for m in seen)
        auth = MqttAuth.from_env({}, username="node7", password_file=str(pwfile))
        await run_agent(broker.port, auth, tmp_path, 1.5)
        assert any(isinstance(m, Heartbeat) and m.node == "node7" for m in seen)
    finally:
        client.loop_stop()


def test_reporter_takes_credentials_from_the_environment(
    secured: tuple[PrivateMosquitto, Path],
) -> None:
    broker, pwfile = secured
    client, seen = watch(broker.port)
    try:
        rep = Reporter.from_env(
            {
                "TRAINWARDEN_BROKER": f"127.0.0.1:{broker.port}",
                "TRAINWARDEN_RUN": "r",
                "RANK": "0",
                "TRAINWARDEN_NODE": "node7",
                "TRAINWARDEN_MQTT_USERNAME": "node7",
                "TRAINWARDEN_MQTT_PASSWORD_FILE": str(pwfile),
            }
        )
        assert rep.wait_connected(5)
        rep.step_done(1, 0.1)
        rep.close()
        deadline = time.monotonic() + 5
        while not any(isinstance(m, StepReport) for m in seen):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        client.loop_stop()


def test_bad_credential_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(HealthError, match="cannot read the MQTT password file"):
        MqttAuth.from_env({}, username="u", password_file=str(tmp_path / "missing"))
    (tmp_path / "pw").write_text("x")
    with pytest.raises(HealthError, match="without a username"):
        MqttAuth.from_env({}, password_file=str(tmp_path / "pw"))
    with pytest.raises(HealthError, match="TLS CA file"):
        MqttAuth.from_env({"TRAINWARDEN_MQTT_CA": str(tmp_path / "nope.pem")})


def test_an_agents_user_name_is_its_node_name_unless_given(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    env = {"TRAINWARDEN_MQTT_PASSWORD_FILE": str(tmp_path / "pw")}
    auth = MqttAuth.from_env(env, default_username="nid001234")
    assert (auth.username, auth.password) == ("nid001234", "secret")
    given = MqttAuth.from_env({**env, "TRAINWARDEN_MQTT_USERNAME": "n7"}, default_username="x")
    assert given.username == "n7"
    assert MqttAuth.from_env({}, default_username="nid001234").username is None


# --- the shipped broker config ------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> Iterator[SecureBroker]:
    b = SecureBroker(("n1", "n2"))
    try:
        yield b.start()
    finally:
        b.close()


@pytest.fixture
def daemon(shipped: SecureBroker) -> Iterator[Peer]:
    """A subscriber with the daemon's credentials, on the loopback listener."""
    p = Peer(shipped.plain_port, DAEMON, shipped.password(DAEMON), subscribe="trainwarden/v1/#")
    try:
        yield p.wait_accepted()
    finally:
        p.close()


@contextlib.asynccontextmanager
async def agent(node: str, port: int, auth: MqttAuth, tmp: Path) -> AsyncIterator[None]:
    """The real agent (simulated hardware) for as long as the block runs."""
    cfg = AgentConfig(
        node=node,
        broker_port=port,
        heartbeat_interval_s=0.2,
        report_interval_s=5,
        probes=ProbeConfig(storage_paths=(str(tmp),)),
        auth=auth,
        reconnect_max_s=0.5,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(Agent(cfg, SimulatedHardware(node, state_dir=tmp / node)).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def statuses(got: list[tuple[str, bytes]], node: str) -> list[str]:
    """The states of ``node``'s status messages among ``got``."""
    out = []
    for topic, payload in got:
        if topic == f"trainwarden/v1/node/{node}/status":
            msg = parse_message(topic, payload)
            assert isinstance(msg, NodeStatus)
            out.append(msg.state)
    return out


@skip_without_tools()
async def test_agent_connects_over_tls_with_its_password(
    shipped: SecureBroker, daemon: Peer, tmp_path: Path
) -> None:
    env = {
        "TRAINWARDEN_MQTT_USERNAME": "n1",
        "TRAINWARDEN_MQTT_PASSWORD_FILE": str(shipped.password_file("n1")),
        "TRAINWARDEN_MQTT_CA": shipped.ca,
    }
    async with agent("n1", shipped.tls_port, MqttAuth.from_env(env), tmp_path):
        got = await asyncio.to_thread(daemon.collect, "trainwarden/v1/node/n1/heartbeat", 10)
    assert statuses(got, "n1") == ["online"]


@skip_without_tools()
async def test_agent_connects_with_its_client_certificate(
    shipped: SecureBroker, daemon: Peer, tmp_path: Path
) -> None:
    cert, key = shipped.client_cert("n2")
    auth = MqttAuth.from_env({}, tls_ca=shipped.ca, tls_cert=cert, tls_key=key)
    async with agent("n2", shipped.cert_port, auth, tmp_path):
        got = await asyncio.to_thread(daemon.collect, "trainwarden/v1/node/n2/heartbeat", 10)
    assert statuses(got, "n2") == ["online"]


@skip_without_tools()
async def test_another_node_cannot_take_over_an_agents_connection(
    shipped: SecureBroker, daemon: Peer, tmp_path: Path
) -> None:
    env = {
        "TRAINWARDEN_MQTT_USERNAME": "n2",
        "TRAINWARDEN_MQTT_PASSWORD_FILE": str(shipped.password_file("n2")),
        "TRAINWARDEN_MQTT_CA": shipped.ca,
    }
    hb2 = "trainwarden/v1/node/n2/heartbeat"
    async with agent("n2", shipped.tls_port, MqttAuth.from_env(env), tmp_path):
        await asyncio.to_thread(daemon.collect, hb2, 10)
        # n1 asks for the agent's client id, then the daemon's: it gets its own name
        for client_id in (AgentConfig(node="n2").client_id, DAEMON):
            n1 = Peer(
                shipped.tls_port, "n1", shipped.password("n1"), client_id=client_id, ca=shipped.ca
            )
            try:
                await asyncio.to_thread(n1.wait_accepted)
                await asyncio.to_thread(n1.publish, "trainwarden/v1/node/n1/heartbeat")
                got = await asyncio.to_thread(daemon.collect, "trainwarden/v1/node/n1/heartbeat")
            finally:
                n1.close()
            assert "offline" not in statuses(got, "n2")  # no last will of n2's
            assert not daemon.dropped.is_set()
        got = await asyncio.to_thread(daemon.collect, hb2)  # n2 reports on
    assert "offline" not in statuses(got, "n2")
